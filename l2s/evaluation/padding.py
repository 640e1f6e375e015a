"""A run's short last batch padded to the run's batch size where the steerer builds per batch shape.

A compiled steering graph or a plain-step engine is built once per batch shape: a run of 200 images
in batches of 16 would build a second shape for its last 8. Repeating the batch's last image up to
16 reuses the built shape; the extra images are thrown away (their time is charged to the batch).
"""
from __future__ import annotations


def padded_size(steerer, steer: bool, size: int, full: int) -> int:
    """How many images a call for ``size`` images asks for in a run whose batches hold ``full``:
    ``full`` where ``steerer`` builds per batch shape for such a call, else ``size``."""
    builds = getattr(steerer, "builds_per_shape", None)
    return full if size < full and builds is not None and builds(steer) else size


def pad(items: list, count: int) -> list:
    """``items`` with its last entry repeated up to ``count`` entries."""
    return list(items) + [items[-1]] * (count - len(items))
