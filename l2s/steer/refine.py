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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .schedule import Schedule


@dataclass
class IterationRecord:
    step: int
    iteration: int
    relation: int | list[int]     # index into the prompt's relation list (per image in a mixed batch)
    loss: list[float]             # per image
    target_probability: list[float]
    updated: bool                 # any image's update was kept
    non_finite: bool = False      # any image's update was rejected for non-finite values
    image_updated: list[bool] | None = None      # the same per image
    image_non_finite: list[bool] | None = None
    image_active: list[bool] | None = None       # per image: still refined at this iteration

    def for_images(self, columns: Sequence[int]) -> IterationRecord:
        """This record as the images ``columns`` of the batch alone would have it (one prompt's
        images: they share its relation index)."""
        def pick(values: list | None, whole):
            return [whole] * len(columns) if values is None else [values[c] for c in columns]

        updated, non_finite = pick(self.image_updated, self.updated), pick(self.image_non_finite, self.non_finite)
        relation = self.relation[columns[0]] if isinstance(self.relation, list) else self.relation
        active = None if self.image_active is None else pick(self.image_active, None)
        return IterationRecord(self.step, self.iteration, relation, pick(self.loss, None),
                               pick(self.target_probability, None), any(updated), any(non_finite),
                               updated, non_finite, active)


@dataclass
class SteeringDiagnostics:
    """Everything the loop did, for the report: one record per loss evaluation."""

    records: list[IterationRecord] = field(default_factory=list)

    def for_step(self, step: int) -> list[IterationRecord]:
        return [r for r in self.records if r.step == step]

    def non_finite_events(self) -> list[IterationRecord]:
        return [r for r in self.records if r.non_finite]

    def for_image(self, index: int) -> SteeringDiagnostics:
        """The records as image ``index`` of the batch alone would have them."""
        return self.for_images([index])

    def for_images(self, columns: Sequence[int]) -> SteeringDiagnostics:
        """The records as a batch of the images ``columns`` alone would have them: in each step,
        up to and including the first iteration at which none of them was still refined (where
        their own loop would have left the step)."""
        kept, exited = [], set()
        for record in self.records:
            if record.step in exited:
                continue
            kept.append(record.for_images(columns))
            if record.image_active is not None and not any(record.image_active[c] for c in columns):
                exited.add(record.step)
        return SteeringDiagnostics(kept)

    def last_target_probabilities(self, num_relations: int) -> list[list[float] | None]:
        """Per relation of one prompt, p(target) per image at its last recorded iteration (None: never
        measured): which relation of several ended short, without reading every step."""
        last: list[list[float] | None] = [None] * num_relations
        for record in self.records:
            if isinstance(record.relation, int) and record.relation < num_relations:
                last[record.relation] = record.target_probability
        return last

    def to_json(self) -> list[dict]:
        return [asdict(r) for r in self.records]


# log_prob_fn(z, relation) -> per-image log-probability of the target class, shape (B,); relation is
# one index for every image, or a tuple of one per image (a batch of prompts, see refine_latents).
LogProbFn = Callable[[torch.Tensor, "int | tuple[int, ...]"], torch.Tensor]


def any_active(active: torch.Tensor) -> bool:
    """The loop's one host read per iteration: does any image still need a backward and update?"""
    return bool(active.any())


def refine_latents(latents: torch.Tensor, step: int, log_prob_fn: LogProbFn, schedule: Schedule,
                   num_relations: int | Sequence[int],
                   diagnostics: SteeringDiagnostics | None = None) -> torch.Tensor:
    """Refine ``latents`` at denoising ``step`` by the published loop; returns new (detached) latents.

    Images of a batch are independent and each follows the batch-1 published loop exactly: the
    loss is the sum of per-image cross-entropies (so each image gets its own gradient), and an
    image stops for the rest of the step once its loss is at or below the target (or its target
    probability reaches ``schedule.exit_probability``), or when its loss or gradient is non-finite
    (the update is skipped and recorded in ``diagnostics``).

    ``num_relations``: the prompt's relation count, or one count per image when the images have
    different prompts; then iteration ``k`` hands ``log_prob_fn`` the tuple of ``k mod n_i`` and an
    image with no relation is never updated.

    The update runs on a float32 master copy of the latent (a bf16 latent would round away
    updates smaller than ~0.4 % of its magnitude); the result is cast back to ``latents.dtype``.
    """
    relation_at, done = _relations(num_relations, latents)
    step_size = schedule.step_sizes[step]
    master = latents.detach().float()
    before = master  # the latent before the last update (the guard's undo)
    pending: list[_Iteration] = []
    for k in range(schedule.iterations[step]):
        relation = relation_at(k)
        loss, log_prob, active, grad = _evaluate(log_prob_fn, master, latents.dtype, relation, done, schedule, step)
        if grad is None:    # no image left to update: the step ends here
            pending.append(_Iteration(k, relation, loss, log_prob, torch.zeros_like(active),
                                      torch.zeros_like(active), active))
            break
        # Guard, on the device (no host read): a non-finite loss or gradient here means the previous
        # update led somewhere unusable, so it is undone.
        evaluated = torch.isfinite(loss) & torch.isfinite(grad).flatten(1).all(1)
        if pending:
            master = _undo_last(pending[-1], active & ~evaluated, before, master)
        stepped = master - step_size * grad
        finite = evaluated & _usable(stepped, latents.dtype)
        update = active & finite
        before, master = master, torch.where(_per_image(update, grad), stepped, master)
        done |= ~update
        pending.append(_Iteration(k, relation, loss, log_prob, update, active & ~finite, active))
    if diagnostics is not None and pending:
        _record(diagnostics, step, pending)
    return master.to(latents.dtype)


def _evaluate(log_prob_fn: LogProbFn, master: torch.Tensor, dtype: torch.dtype, relation, done: torch.Tensor,
              schedule: Schedule, step: int):
    """(loss, log p, active images, float32 gradient of the loss) at ``master`` in ``dtype``; the gradient is
    None, its backward skipped, when no image is active (:func:`_still_active`)."""
    with torch.enable_grad():
        z = master.detach().to(dtype).requires_grad_(True)
        log_prob = log_prob_fn(z, relation)
        loss = -log_prob
        active = _still_active(loss, log_prob, done, schedule, step)
        if not any_active(active):
            return loss.detach(), log_prob.detach(), active, None
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), log_prob.detach(), active, grad.float()


@dataclass
class _Iteration:
    """One iteration's per-image tensors, kept on the device until the step ends (see :func:`_record`)."""

    iteration: int
    relation: int | tuple[int, ...]
    loss: torch.Tensor
    log_prob: torch.Tensor
    updated: torch.Tensor       # its update was kept (an undo at the next iteration clears it)
    non_finite: torch.Tensor    # its update was rejected for non-finite values
    active: torch.Tensor        # still refined at this iteration


def _per_image(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image mask (B,) shaped to broadcast over ``like`` (B, ...)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _undo_last(last: _Iteration, unusable: torch.Tensor, before: torch.Tensor, master: torch.Tensor) -> torch.Tensor:
    """``master`` with the last update of the ``unusable`` images taken back (and recorded as not kept)."""
    undo = last.updated & unusable
    last.updated = last.updated & ~undo
    return torch.where(_per_image(undo, master), before, master)


def _usable(stepped: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per image: the updated latent, in the latent's dtype, is finite and its squares do not overflow,
    as the model's normalisations would need; the last update of a step is applied without a loss to check it."""
    return torch.isfinite(stepped.to(dtype).float().square().flatten(1).sum(1))


def _relations(num_relations: int | Sequence[int], latents: torch.Tensor):
    """(iteration -> the relation argument of ``log_prob_fn``, the initial "done" mask: images
    without a relation are done from the start)."""
    per_image = not isinstance(num_relations, int)
    counts = list(num_relations) if per_image else [num_relations]
    if per_image and len(counts) != latents.shape[0]:
        raise ValueError(f"{len(counts)} relation counts for {latents.shape[0]} images")
    if max(counts, default=0) < 1 or min(counts) < 0:
        raise ValueError("refine_latents needs at least one relation")
    done = torch.tensor([n == 0 for n in counts] if per_image else [False] * latents.shape[0],
                        device=latents.device)
    if per_image:
        return (lambda k: tuple(k % n if n else 0 for n in counts)), done
    return (lambda k: k % num_relations), done


def _still_active(loss: torch.Tensor, log_prob: torch.Tensor, done: torch.Tensor,
                  schedule: Schedule, step: int) -> torch.Tensor:
    """Images that still need an update: above the loss target, not yet exited, not done."""
    loss = loss.detach()
    # A non-finite loss counts as "not there yet": it must be seen and recorded.
    active = ((loss > schedule.loss_targets[step]) | ~torch.isfinite(loss)) & ~done
    if schedule.exit_probability is not None:
        active &= ~(log_prob.detach().exp() >= schedule.exit_probability)
    return active


def _record(diagnostics: SteeringDiagnostics, step: int, pending: list[_Iteration]) -> None:
    """Copy the step's per-iteration tensors to host records in one transfer, after the loop."""
    columns = [[entry.loss.float(), entry.log_prob.float().exp(), entry.updated.float(), entry.non_finite.float(),
                entry.active.float()] for entry in pending]
    loss, probability, update, non_finite, active = torch.stack([torch.stack(c) for c in columns]).cpu().unbind(1)
    for row, entry in enumerate(pending):
        relation = entry.relation
        diagnostics.records.append(IterationRecord(
            step=step, iteration=entry.iteration, relation=list(relation) if isinstance(relation, tuple) else relation,
            loss=loss[row].tolist(), target_probability=probability[row].tolist(),
            updated=bool(update[row].any()), non_finite=bool(non_finite[row].any()),
            image_updated=[bool(u) for u in update[row].tolist()],
            image_non_finite=[bool(n) for n in non_finite[row].tolist()],
            image_active=[bool(a) for a in active[row].tolist()]))
