"""Steering schedules: which denoising steps are steered, with what step size and loss target."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Sequence

# Published loss targets (cross-entropy) per step index; 7e-5 from step 3 on.
_PUBLISHED_LOSS_TARGETS = (1e-5, 3e-5, 5e-5)
_PUBLISHED_LATE_TARGET = 7e-5

# Published per-family settings: step size alpha and iterations per steered step (M + 1 = 16).
_PUBLISHED = {
    "flux-schnell": dict(step_size=5.0, iterations=16),
    "flux-dev": dict(step_size=5.0, iterations=16),
    "sd21": dict(step_size=5.0, iterations=16),
    "sd14": dict(step_size=7.5, iterations=16),
}


@dataclass(frozen=True)
class Schedule:
    """Which denoising steps are steered, and how hard.

    ``iterations[i]`` is the number of refinement iterations at step i: up to that many loss
    evaluations, each followed by an update (the last update is applied without being
    re-evaluated, as published: M = 15 means 16 iterations). 0 makes a plain step.
    ``exit_probability`` (optional) stops a step's loop as soon as every image's target
    probability reaches it; ``loss_targets`` are the published cross-entropy thresholds.
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
        if n == 0:
            raise ValueError("a schedule needs at least one denoising step")
        # Stored as plain tuples of Python numbers: reports and comparisons see what was meant.
        object.__setattr__(self, "iterations", tuple(_count(i, step) for step, i in enumerate(self.iterations)))
        object.__setattr__(self, "step_sizes", tuple(
            _step_size(a, step, self.iterations[step]) for step, a in enumerate(self.step_sizes)))
        object.__setattr__(self, "loss_targets",
                           tuple(_loss_target(t, step) for step, t in enumerate(self.loss_targets)))
        if self.exit_probability is not None:
            p = self.exit_probability
            if not _real(p) or not 0 < p <= 1:
                raise ValueError(f"exit_probability must be in (0, 1] or None, got {p!r}")
            object.__setattr__(self, "exit_probability", float(p))

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
        return sum(self.iterations)

    def to_json(self) -> dict:
        return asdict(self)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value, step: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"iterations[{step}] must be a whole number >= 0, got {value!r}")
    return int(value)


def _step_size(value, step: int, iterations: int) -> float:
    # Negative sizes would climb the loss: steer away from the relation while reporting "steered".
    if not _real(value) or value < 0 or (iterations and value == 0):
        raise ValueError(f"step_sizes[{step}] must be finite and >= 0 (> 0 on a steered step), got {value!r}")
    return float(value)


def _loss_target(value, step: int) -> float:
    if not _real(value) or value < 0:
        raise ValueError(f"loss_targets[{step}] must be a finite number >= 0, got {value!r}")
    return float(value)


def published_loss_target(step: int) -> float:
    return _PUBLISHED_LOSS_TARGETS[step] if step < len(_PUBLISHED_LOSS_TARGETS) else _PUBLISHED_LATE_TARGET


def validate_step_size(step_size: float) -> float:
    if not _real(step_size) or step_size <= 0:
        raise ValueError(f"step size must be a positive finite number, got {step_size!r}")
    return float(step_size)


def _num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return int(num_steps)


def reference_schedule(family: str, num_steps: int, step_size: float | None = None) -> Schedule:
    """The published schedule for ``family`` ("flux-dev", "flux-schnell", "sd14", "sd21").

    Multi-step models steer the first half of the steps (0-24 of 50); schnell steers only step 0,
    i.e. it optimises the initial noise. ``step_size`` replaces the family's published step size
    (a model of our own, e.g. the shapes world, may need a gentler one).
    """
    if family not in _PUBLISHED:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(_PUBLISHED)}")
    num_steps = _num_steps(num_steps)
    settings = _PUBLISHED[family]
    end = 1 if family == "flux-schnell" else (num_steps + 1) // 2
    end = min(end, num_steps)
    iterations = tuple(settings["iterations"] if i < end else 0 for i in range(num_steps))
    return Schedule(
        name="reference",
        iterations=iterations,
        step_sizes=(settings["step_size"] if step_size is None else validate_step_size(step_size),) * num_steps,
        loss_targets=tuple(published_loss_target(i) for i in range(num_steps)),
        description="published schedule: up to 16 iterations (M=15) on each steered step, tiny "
                    "loss targets (almost never reached, so nearly every steered step runs all 16)",
    )


def custom_schedule(num_steps: int, steered: Sequence[int], iterations: int, step_size: float,
                    name: str = "custom", exit_probability: float | None = None) -> Schedule:
    """A schedule with ``iterations`` updates on each step in ``steered`` (published loss targets)."""
    validate_step_size(step_size)
    num_steps, steered = _num_steps(num_steps), set(steered)
    outside = sorted(i for i in steered if not 0 <= i < num_steps)
    if outside:   # would never be steered: a typo, or a schedule made for more steps
        raise ValueError(f"steered steps {outside} are outside 0..{num_steps - 1} of a {num_steps}-step schedule")
    return Schedule(
        name=name,
        iterations=tuple(iterations if i in steered else 0 for i in range(num_steps)),
        step_sizes=(step_size,) * num_steps,
        loss_targets=tuple(published_loss_target(i) for i in range(num_steps)),
        exit_probability=exit_probability,
    )
