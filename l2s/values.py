"""Checks of single values a user gives (counts, sizes, seeds, numbers): one ``UsageError`` line
each, shared by the pipelines, the evaluation, the shapes world and the command line (no torch)."""
from __future__ import annotations

import math

from l2s.errors import UsageError


def _numpy_hint(value, cast: str = "int(...)") -> str:
    """Reports are JSON: numbers must be Python's own, so a numpy scalar is refused with the fix."""
    return f" ({type(value).__name__}: pass {cast})" if type(value).__module__ == "numpy" else ""


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}{_numpy_hint(value)}")
    return value


# Far past any supported model's trained size (FLUX.1: 2 MP): a larger side would not fail, it would
# run for hours or exhaust memory.
MAX_SIDE = 4096


# Far past any schedule's step count (FLUX.1-dev: 50): more would not fail but fill memory.
MAX_STEPS = 1000


def step_count(value, name: str) -> int:
    positive_int(value, name)
    if value > MAX_STEPS:
        raise UsageError(f"{name} must be at most {MAX_STEPS}, got {value}")
    return value


def image_side(value, name: str) -> int:
    positive_int(value, name)
    if value > MAX_SIDE:
        raise UsageError(f"{name} must be at most {MAX_SIDE} pixels, got {value}")
    return value


def finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}{_numpy_hint(value, 'float(...)')}")
    return float(value)


def seed_value(value, name: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 64:
        raise UsageError(f"{name} must be an integer in [0, 2**64), got {value!r}{_numpy_hint(value)}")
    return value
