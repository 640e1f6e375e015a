"""The refinement loop: gradient steps on the latent at one steered denoising step.

At a steered step the latent ``z`` is refined by gradient descent on the relation classifier's
cross-entropy: ``z <- z - alpha * grad_z(-log p[r])`` (no normalisation, clipping or momentum),
up to ``iterations`` loss evaluations per step, stopping early once the loss is at or below the
step's target. With several relations the target alternates: iteration ``k`` optimises relation
``k mod n``, restarting at relation 0 on every step. The model-specific part (run the denoiser
with map capture, classify) is the ``log_prob_fn`` handed in, e.g. a
:class:`~l2s.steer.objective.SteeringObjective` bound to the step.

Host synchronisation: an iteration (forward, classifier, backward, update) never waits on the
device. The loop reads one flag per iteration, "is any image still active?", right after the
forward and before the backward: that is the one place where the answer saves work (the backward
and the rest of the step), so an exiting step runs exactly the forwards and backwards of the
published loop and nothing more. Diagnostics stay on the device and are read once per step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .schedule import Schedule


@dataclass
class IterationRecord:
    step: int
    iteration: int
    relation: int                 # index into the prompt's relation list
    loss: list[float]             # per image
    target_probability: list[float]
    updated: bool
    non_finite: bool = False


@dataclass
class SteeringDiagnostics:
    """Everything the loop did, for the report: one record per loss evaluation."""

    records: list[IterationRecord] = field(default_factory=list)

    def for_step(self, step: int) -> list[IterationRecord]:
        return [r for r in self.records if r.step == step]

    def non_finite_events(self) -> list[IterationRecord]:
        return [r for r in self.records if r.non_finite]

    def to_json(self) -> list[dict]:
        return [asdict(r) for r in self.records]


# log_prob_fn(z, relation_index) -> per-image log-probability of the target class, shape (B,)
LogProbFn = Callable[[torch.Tensor, int], torch.Tensor]


def any_active(active: torch.Tensor) -> bool:
    """The loop's one host read per iteration: does any image still need a backward and update?"""
    return bool(active.any())


def refine_latents(latents: torch.Tensor, step: int, log_prob_fn: LogProbFn, schedule: Schedule,
                   num_relations: int, diagnostics: SteeringDiagnostics | None = None) -> torch.Tensor:
    """Refine ``latents`` at denoising ``step`` by the published loop; returns new (detached) latents.

    Images of a batch are independent and each follows the batch-1 published loop exactly: the
    loss is the sum of per-image cross-entropies (so each image gets its own gradient), and an
    image stops for the rest of the step once its loss is at or below the target (or its target
    probability reaches ``schedule.exit_probability``), or when its loss or gradient is non-finite
    (the update is skipped and recorded in ``diagnostics``).

    The update runs on a float32 master copy of the latent (a bf16 latent would round away
    updates smaller than ~0.4 % of its magnitude); the result is cast back to ``latents.dtype``.
    """
    if num_relations < 1:
        raise ValueError("refine_latents needs at least one relation")
    step_size = schedule.step_sizes[step]
    master = latents.detach().float()
    before = master  # the latent before the last update (the guard's undo)
    done = torch.zeros(latents.shape[0], dtype=torch.bool, device=latents.device)
    pending: list[tuple] = []
    for k in range(schedule.iterations[step]):
        relation = k % num_relations
        with torch.enable_grad():
            z = master.detach().to(latents.dtype).requires_grad_(True)
            log_prob = log_prob_fn(z, relation)
            loss = -log_prob
            active = _still_active(loss, log_prob, done, schedule, step)
            if not any_active(active):
                pending.append((k, relation, loss.detach(), log_prob.detach(), torch.zeros_like(active),
                                torch.zeros_like(active)))
                break
            (grad,) = torch.autograd.grad(loss.sum(), z)
        grad = grad.float()
        # Guard, on the device (no host read): a non-finite loss or gradient here means the previous
        # update led somewhere unusable, so it is undone. An update is not made when its latent (in
        # the latent's dtype) is non-finite or so large that its squares overflow, as the model's
        # normalisations would: the last update of a step is applied without a loss to check it.
        evaluated = torch.isfinite(loss.detach()) & torch.isfinite(grad).flatten(1).all(1)
        if pending:
            undo = pending[-1][4] & active & ~evaluated
            master = torch.where(undo.view(-1, *([1] * (grad.dim() - 1))), before, master)
            pending[-1] = (*pending[-1][:4], pending[-1][4] & ~undo, pending[-1][5])
        stepped = master - step_size * grad
        finite = evaluated & torch.isfinite(stepped.to(latents.dtype).float().square().flatten(1).sum(1))
        update = active & finite
        mask = update.view(-1, *([1] * (grad.dim() - 1)))
        before, master = master, torch.where(mask, stepped, master)
        done |= ~update
        pending.append((k, relation, loss.detach(), log_prob.detach(), update, active & ~finite))
    if diagnostics is not None and pending:
        _record(diagnostics, step, pending)
    return master.to(latents.dtype)


def _still_active(loss: torch.Tensor, log_prob: torch.Tensor, done: torch.Tensor,
                  schedule: Schedule, step: int) -> torch.Tensor:
    """Images that still need an update: above the loss target, not yet exited, not done."""
    loss = loss.detach()
    # A non-finite loss counts as "not there yet": it must be seen and recorded.
    active = ((loss > schedule.loss_targets[step]) | ~torch.isfinite(loss)) & ~done
    if schedule.exit_probability is not None:
        active &= ~(log_prob.detach().exp() >= schedule.exit_probability)
    return active


def _record(diagnostics: SteeringDiagnostics, step: int, pending: list[tuple]) -> None:
    """Copy the step's per-iteration tensors to host records in one transfer, after the loop."""
    columns = [[entry[2].float(), entry[3].float().exp(), entry[4].float(), entry[5].float()]
               for entry in pending]
    loss, probability, update, non_finite = torch.stack([torch.stack(c) for c in columns]).cpu().unbind(1)
    for row, (k, relation, *_) in enumerate(pending):
        diagnostics.records.append(IterationRecord(
            step=step, iteration=k, relation=relation,
            loss=loss[row].tolist(), target_probability=probability[row].tolist(),
            updated=bool(update[row].any()), non_finite=bool(non_finite[row].any())))
