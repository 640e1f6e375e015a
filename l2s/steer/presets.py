"""Named schedule presets: the published schedule and cheaper variants, each saying what it trades."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .schedule import Schedule, reference_schedule


@dataclass(frozen=True)
class Preset:
    """A named schedule recipe: how it differs from the published one and what it trades."""

    name: str
    trades: str
    front_fraction: float | None = None       # heavy iterations only on this leading fraction
    exit_probability: float | None = None
    steps: dict = field(default_factory=dict)  # family -> recommended denoising steps


PRESETS = {
    "reference": Preset(
        "reference", "the published schedule: 16 iterations on every steered step (first half; "
        "schnell: step 0); nothing traded"),
    "front-loaded": Preset(
        "front-loaded", "16 iterations on the first 10% of steps, then 1 per steered step: "
        "4x fewer forward+backward passes at 50 steps, for somewhat weaker steering", front_fraction=0.10),
    "front-loaded-20": Preset(
        "front-loaded-20", "as front-loaded over the first 20% of steps: more of the steering "
        "strength back, at more cost", front_fraction=0.20),
    "early-exit": Preset(
        "early-exit", "published iterations, but a step stops once p(target) >= 0.9 (the published "
        "targets, p >= 0.99993, are almost never reached); easy prompts stop after a few "
        "iterations, hard ones cost as much as the reference", exit_probability=0.9),
    "fast": Preset(
        "fast", "front-loaded + early exit at p >= 0.9 + fewer denoising steps (FLUX.1-dev 28 "
        "instead of 50, SD 30): the cheapest preset; steering strength and image detail both "
        "drop somewhat", front_fraction=0.10, exit_probability=0.9,
        steps={"flux-dev": 28, "sd14": 30, "sd21": 30}),
}


# The families' published denoising steps, which a preset's ``steps`` recommendation replaces.
PUBLISHED_STEPS = {"flux-dev": 50, "flux-schnell": 4, "sd14": 50, "sd21": 50}


def preset_steps(name: str, family: str, default: int) -> int:
    """Denoising steps a preset recommends for a model of ``family`` that samples ``default`` steps.

    The recommendation is for the family's published step count; a model with its own default (a
    shapes-world model under the flux-dev rule, say) gets the same fraction of its own steps.
    ``default`` when the preset has no opinion.
    """
    recommended = _preset(name).steps.get(family)
    if recommended is None:
        return default
    return max(1, round(default * recommended / PUBLISHED_STEPS[family]))


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown schedule preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def schedule_preset(name: str, family: str, num_steps: int, step_size: float | None = None) -> Schedule:
    """The schedule of preset ``name`` for ``family`` over ``num_steps`` denoising steps
    (``step_size``: instead of the family's published one)."""
    preset = _preset(name)
    base = reference_schedule(family, num_steps, step_size)
    iterations = list(base.iterations)
    if preset.front_fraction is not None:
        heavy = max(1, math.ceil(preset.front_fraction * num_steps))
        iterations = [n if i < heavy else min(n, 1) for i, n in enumerate(iterations)]
    return Schedule(name=name, iterations=tuple(iterations), step_sizes=base.step_sizes,
                    loss_targets=base.loss_targets,
                    exit_probability=preset.exit_probability, description=preset.trades)
