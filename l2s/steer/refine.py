"""The refinement loop: gradient steps on the latent at one steered denoising step.

At a steered step the latent ``z`` is refined by gradient descent on the relation classifier's
cross-entropy: ``z <- z - alpha * grad_z(-log p[r])`` (no normalisation, clipping or momentum),
up to ``iterations`` loss evaluations per step, stopping early once the loss is at or below the
step's target. With several relations the target alternates: iteration ``k`` optimises relation
``k mod n``, restarting at relation 0 on every step. The model-specific part (run the denoiser
with map capture, classify) is the ``log_prob_fn`` handed in, e.g. a
:class:`~l2s.steer.objective.SteeringObjective` bound to the step.
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


def refine_latents(latents: torch.Tensor, step: int, log_prob_fn: LogProbFn, schedule: Schedule,
                   num_relations: int, diagnostics: SteeringDiagnostics | None = None, *,
                   sync_each_iteration: bool = True) -> torch.Tensor:
    """Refine ``latents`` at denoising ``step`` by the published loop; returns new (detached) latents.

    Images of a batch are independent and each follows the batch-1 published loop exactly: the
    loss is the sum of per-image cross-entropies (so each image gets its own gradient), and an
    image stops for the rest of the step once its loss is at or below the target (or its target
    probability reaches ``schedule.exit_probability``), or when its loss or gradient is non-finite
    (the update is skipped and recorded in ``diagnostics``).

    ``sync_each_iteration=False`` is the fast path: the stop tests stay on the device as masks and
    the host learns that every image is done one iteration late, so the GPU never waits on the
    CPU inside the loop; the result is identical, at the cost of at most one wasted iteration.
    """
    if num_relations < 1:
        raise ValueError("refine_latents needs at least one relation")
    step_size = schedule.step_sizes[step]
    done = torch.zeros(latents.shape[0], dtype=torch.bool, device=latents.device)
    previous_all_done: torch.Tensor | None = None
    pending: list[tuple] = []
    for k in range(schedule.iterations[step]):
        relation = k % num_relations
        with torch.enable_grad():
            z = latents.detach().clone().requires_grad_(True)
            log_prob = log_prob_fn(z, relation)
            loss = -log_prob
            active = _still_active(loss, log_prob, done, schedule, step)
            if sync_each_iteration and not bool(active.any()):
                pending.append((k, relation, loss, log_prob, active, torch.zeros_like(active)))
                break
            (grad,) = torch.autograd.grad(loss.sum(), z)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad).flatten(1).all(1)
        update = active & finite
        mask = update.view(-1, *([1] * (grad.dim() - 1)))
        latents = torch.where(mask, z.detach() - step_size * grad, z.detach())
        done |= ~update
        pending.append((k, relation, loss, log_prob, update, active & ~finite))
        if sync_each_iteration:
            if bool(done.all()):
                break
        else:
            # Test the previous iteration's flag: it is ready long before this one's.
            if previous_all_done is not None and bool(previous_all_done):
                break
            previous_all_done = done.all()
    if diagnostics is not None:
        _record(diagnostics, step, pending)
    return latents.detach()


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
    """Copy the loop's per-iteration tensors to host records (once, after the loop)."""
    for k, relation, loss, log_prob, update, non_finite in pending:
        diagnostics.records.append(IterationRecord(
            step=step, iteration=k, relation=relation,
            loss=[float(x) for x in loss.detach().float().cpu()],
            target_probability=[float(x) for x in log_prob.detach().float().exp().cpu()],
            updated=bool(update.any()), non_finite=bool(non_finite.any())))
