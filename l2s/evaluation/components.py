"""Connected components of a boolean mask, and the box of the largest one."""
from __future__ import annotations

import numpy as np

from .geometry import Box


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (``scipy.ndimage.label``): (labels with 0 = background, count)."""
    from scipy import ndimage   # imported when used: the GPU bench imports this package without scoring

    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    return labels, int(count)


def largest_component_box(mask: np.ndarray, connectivity: int = 8) -> tuple[Box, np.ndarray] | None:
    """Box ``(x1, y1, x2, y2)`` (right/bottom exclusive) and mask of the largest component, or None."""
    labels, count = label_components(mask, connectivity)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == int(np.argmax(sizes)) + 1
    ys, xs = np.nonzero(component)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), component
