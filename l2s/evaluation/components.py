"""Connected components of a boolean mask, and the box of the largest one."""
from __future__ import annotations

import numpy as np

from .geometry import Box


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: (labels with 0 = background, count).

    Uses ``scipy.ndimage.label`` when scipy is installed, else a vectorised min-label propagation.
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    mask = np.asarray(mask, dtype=bool)
    try:
        from scipy import ndimage
    except ImportError:
        return _label_components_numpy(mask, connectivity)
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def _label_components_numpy(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Fallback labelling: every pixel repeatedly takes the smallest pixel index among its
    neighbours, then jumps to the label of the pixel its label names (pointer jumping, so long
    components converge in few rounds)."""
    height, width = mask.shape
    big = height * width  # index of a sentinel past the last pixel
    current = np.where(mask, np.arange(height * width).reshape(height, width), big)
    shifts = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        shifts += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    while True:
        padded = np.pad(current, 1, constant_values=big)
        best = current.copy()
        for dy, dx in shifts:
            best = np.minimum(best, padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width])
        best = np.where(mask, best, big)
        lookup = np.append(best.ravel(), big)
        for _ in range(4):  # a label is a pixel of the same component: take that pixel's label
            best = lookup[best]
            lookup = np.append(best.ravel(), big)
        if np.array_equal(best, current):
            break
        current = best
    roots = np.unique(current[mask])
    labels = np.zeros((height, width), np.int32)
    labels[mask] = np.searchsorted(roots, current[mask]) + 1
    return labels, len(roots)


def largest_component_box(mask: np.ndarray, connectivity: int = 8) -> tuple[Box, np.ndarray] | None:
    """Box ``(x1, y1, x2, y2)`` (right/bottom exclusive) and mask of the largest component, or None."""
    labels, count = label_components(mask, connectivity)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == int(np.argmax(sizes)) + 1
    ys, xs = np.nonzero(component)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), component
