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


def published_loss_target(step: int) -> float:
    return _PUBLISHED_LOSS_TARGETS[step] if step < len(_PUBLISHED_LOSS_TARGETS) else _PUBLISHED_LATE_TARGET


def validate_step_size(step_size: float) -> float:
    number = isinstance(step_size, (int, float)) and not isinstance(step_size, bool)
    if not number or not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step size must be a positive finite number, got {step_size!r}")
    return float(step_size)


def reference_schedule(family: str, num_steps: int, step_size: float | None = None) -> Schedule:
    """The published schedule for ``family`` ("flux-dev", "flux-schnell", "sd14", "sd21").

    Multi-step models steer the first half of the steps (0-24 of 50); schnell steers only step 0,
    i.e. it optimises the initial noise. ``step_size`` replaces the family's published step size
    (a model of our own, e.g. the shapes world, may need a gentler one).
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
        step_sizes=(settings["step_size"] if step_size is None else validate_step_size(step_size),) * num_steps,
        loss_targets=tuple(published_loss_target(i) for i in range(num_steps)),
        description="published schedule: up to 16 iterations (M=15) on each steered step, tiny "
                    "loss targets (almost never reached, so nearly every steered step runs all 16)",
    )


def custom_schedule(num_steps: int, steered: Sequence[int], iterations: int, step_size: float,
                    name: str = "custom", exit_probability: float | None = None) -> Schedule:
    """A schedule with ``iterations`` updates on each step in ``steered`` (published loss targets)."""
    validate_step_size(step_size)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    num_steps, steered = int(num_steps), set(steered)
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
