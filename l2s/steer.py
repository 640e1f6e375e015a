"""Test-time steering: schedules and the refinement loop, independent of the diffusion model.

At a steered denoising step the latent ``z`` is refined by gradient descent on the relation
classifier's cross-entropy: ``z <- z - alpha * grad_z(-log p[r])`` (no normalisation, clipping or
momentum), up to ``iterations + 1`` forwards per step, stopping early once the loss is at or below
the step's target.  With several relations the target alternates: iteration ``k`` optimises
relation ``k mod n``, restarting at relation 0 on every step.  The model-specific part (run the
denoiser with map capture, classify) is the ``loss_fn`` handed to :func:`refine_latents`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

# Published loss targets (cross-entropy) per step index; 7e-5 from step 3 on.
_PUBLISHED_LOSS_TARGETS = (1e-5, 3e-5, 5e-5)
_PUBLISHED_LATE_TARGET = 7e-5

# Published per-family settings: step size alpha, refinement updates M, steered fraction.
_PUBLISHED = {
    "flux-schnell": dict(step_size=5.0, iterations=15),
    "flux-dev": dict(step_size=5.0, iterations=15),
    "sd21": dict(step_size=5.0, iterations=15),
    "sd14": dict(step_size=7.5, iterations=15),
}


@dataclass(frozen=True)
class Schedule:
    """Which denoising steps are steered, and how hard.

    ``iterations[i]`` is M for step i: up to M + 1 loss evaluations and M + 1 updates (the last
    update is applied without being re-evaluated, as published).  A step with 0 iterations is a
    plain step.  ``exit_probability`` (optional) stops a step's loop as soon as every image's
    target probability reaches it; ``loss_targets`` are the published cross-entropy thresholds.
    """

    name: str
    iterations: tuple[int, ...]
    step_sizes: tuple[float, ...]
    loss_targets: tuple[float, ...]
    exit_probability: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.iterations)
        if not (len(self.step_sizes) == len(self.loss_targets) == n):
            raise ValueError("schedule lists must all have one entry per denoising step")

    @property
    def num_steps(self) -> int:
        return len(self.iterations)

    def is_steered(self, step: int) -> bool:
        return step < self.num_steps and self.iterations[step] > 0

    @property
    def steered_steps(self) -> list[int]:
        return [i for i in range(self.num_steps) if self.is_steered(i)]

    def max_forwards(self) -> int:
        """Upper bound on steering forward+backward passes for one image."""
        return sum(m + 1 for m in self.iterations if m > 0)

    def to_json(self) -> dict:
        return asdict(self)


def published_loss_target(step: int) -> float:
    return _PUBLISHED_LOSS_TARGETS[step] if step < len(_PUBLISHED_LOSS_TARGETS) else _PUBLISHED_LATE_TARGET


def reference_schedule(family: str, num_steps: int) -> Schedule:
    """The published schedule for ``family`` ("flux-dev", "flux-schnell", "sd14", "sd21").

    Multi-step models steer the first half of the steps (0-24 of 50); schnell steers only step 0,
    i.e. it optimises the initial noise.
    """
    if family not in _PUBLISHED:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(_PUBLISHED)}")
    settings = _PUBLISHED[family]
    end = 1 if family == "flux-schnell" else (num_steps + 1) // 2
    end = min(end, num_steps)
    iterations = tuple(settings["iterations"] if i < end else 0 for i in range(num_steps))
    return Schedule(
        name="reference",
        iterations=iterations,
        step_sizes=(settings["step_size"],) * num_steps,
        loss_targets=tuple(published_loss_target(i) for i in range(num_steps)),
        description="published schedule: M=15 updates on each steered step, tiny loss targets "
                    "(almost never reached, so nearly every steered step runs all 16 forwards)",
    )


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


# loss_fn(z, relation_index) -> per-image log-probability of the target class, shape (B,)
LogProbFn = Callable[[torch.Tensor, int], torch.Tensor]


def refine_latents(latents: torch.Tensor, step: int, log_prob_fn: LogProbFn, schedule: Schedule,
                   num_relations: int, diagnostics: SteeringDiagnostics | None = None) -> torch.Tensor:
    """Refine ``latents`` at denoising ``step`` by the published loop; returns new (detached) latents.

    Images of a batch are independent: the loss is the sum of per-image cross-entropies (so each
    image gets exactly its own batch-1 gradient) and an image stops being updated once its loss
    is at or below the target.  A non-finite loss or gradient skips the update and ends the step's
    loop; it is recorded in ``diagnostics``.
    """
    if num_relations < 1:
        raise ValueError("refine_latents needs at least one relation")
    iterations = schedule.iterations[step]
    step_size = schedule.step_sizes[step]
    target = schedule.loss_targets[step]
    for k in range(iterations + 1):
        relation = k % num_relations
        with torch.enable_grad():
            z = latents.detach().clone().requires_grad_(True)
            log_prob = log_prob_fn(z, relation)
            loss = -log_prob
            active = loss.detach() > target
            if schedule.exit_probability is not None:
                active &= log_prob.detach().exp() < schedule.exit_probability
            finite = bool(torch.isfinite(loss).all())
            grad = None
            if finite and bool(active.any()):
                (grad,) = torch.autograd.grad(loss.sum(), z)
                finite = bool(torch.isfinite(grad).all())
        updated = finite and grad is not None
        if diagnostics is not None:
            diagnostics.records.append(IterationRecord(
                step=step, iteration=k, relation=relation,
                loss=[float(x) for x in loss.detach().float().cpu()],
                target_probability=[float(x) for x in log_prob.detach().float().exp().cpu()],
                updated=updated, non_finite=not finite))
        if not updated:
            break
        mask = active.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
        latents = (z - step_size * grad * mask).detach()
    return latents.detach()


def validate_step_size(step_size: float) -> float:
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step size must be a positive finite number, got {step_size}")
    return step_size


def custom_schedule(num_steps: int, steered: Sequence[int], iterations: int, step_size: float,
                    name: str = "custom", exit_probability: float | None = None) -> Schedule:
    """A schedule with ``iterations`` updates on each step in ``steered`` (published loss targets)."""
    validate_step_size(step_size)
    steered = set(steered)
    return Schedule(
        name=name,
        iterations=tuple(iterations if i in steered else 0 for i in range(num_steps)),
        step_sizes=(step_size,) * num_steps,
        loss_targets=tuple(published_loss_target(i) for i in range(num_steps)),
        exit_probability=exit_probability,
    )
