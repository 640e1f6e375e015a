"""The exact detector of the shapes world: colour segmentation and shape-template matching.

It is the judge for models trained on this world, where no open-vocabulary detector is needed,
and tolerates the colour noise and blur of generated images.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from l2s.errors import L2SError
from l2s.evaluation import Box, Detection, Detector, label_components

from .scenes import BACKGROUND, COLOURS, SHAPES, shape_template

# Score cost of matching a shape grown by a pixel (see _template_iou): exact fits win ties.
_GROWN_PENALTY = 0.03


class ShapesDetector(Detector):
    """Exact detector of the shapes world.

    Pixels are assigned to palette colours by :meth:`classify_pixels` (robust to noise, blur and
    JPEG; foreign colours are ignored). Connected components of a colour are candidate objects; each is compared
    with every shape template drawn in its box, and its shape is the best-matching one (IoU).
    Labels are ``"red circle"``, ``"red"`` or ``"circle"``: the largest matching component wins;
    the score is its IoU with the requested shape's template (best shape for a colour alone).
    """

    def __init__(self, palette: dict[str, tuple[int, int, int]] | None = None,
                 background: tuple[int, int, int] = BACKGROUND, max_residual: float = 100.0,
                 min_pixels: int = 6) -> None:
        self.palette = dict(palette or COLOURS)
        self.background = np.array(background, dtype=np.float32)
        self.max_residual = max_residual
        self.min_pixels = min_pixels
        self._colour_names = list(self.palette)
        self._directions = np.array(list(self.palette.values()), dtype=np.float32) - self.background

    def classify_pixels(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Per-pixel class map: 0 background or unknown, ``k + 1`` the k-th palette colour.

        A pixel is modelled as a blend ``background + α·(colour − background)`` (what blur, JPEG
        and anti-aliasing make of an object edge); it belongs to the colour with ``α ≥ 0.5`` and
        the smallest distance to that blend line, if that distance is at most ``max_residual``.
        Thresholding α at one half keeps blurred edges where the sharp edge was.
        """
        pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
        offsets = pixels[:, :, :3] - self.background  # (H, W, 3)
        alphas = offsets @ self._directions.T / (self._directions ** 2).sum(axis=1)  # (H, W, K)
        residuals = np.linalg.norm(offsets[:, :, None, :] - alphas[..., None] * self._directions, axis=-1)
        residuals = np.where((alphas >= 0.5) & (residuals <= self.max_residual), residuals, np.inf)
        best = residuals.argmin(axis=-1)
        return np.where(np.isfinite(residuals.min(axis=-1)), best + 1, 0)

    def colour_class(self, colour: str) -> int:
        """The class :meth:`classify_pixels` gives pixels of ``colour``."""
        return self._colour_names.index(colour) + 1

    def parse_label(self, label: str) -> tuple[str | None, str | None]:
        """``(colour, shape)`` named by a label such as ``"a red circle"`` (either may be None)."""
        words = [w for w in label.lower().split() if w not in ("a", "an", "the")]
        colour = next((w for w in words if w in self.palette), None)
        shape = next((w for w in words if w in SHAPES), None)
        unknown = [w for w in words if w not in self.palette and w not in SHAPES]
        if unknown or (colour is None and shape is None):
            raise L2SError(f"the shapes detector cannot look for {label!r}: labels are '<colour> <shape>', "
                           f"'<colour>' or '<shape>' with colours {', '.join(self.palette)} "
                           f"and shapes {', '.join(SHAPES)}")
        return colour, shape

    def components(self, classes: np.ndarray, colour: str) -> list[tuple[Box, dict[str, float], int]]:
        """Objects of one colour: (box, IoU with each shape template, pixel count) per component."""
        labels, count = label_components(classes == self.colour_class(colour), connectivity=8)
        found = []
        for index, region in enumerate(_component_slices(labels, count), start=1):
            if region is None:
                continue
            rows, cols = region
            mask = labels[rows, cols] == index
            pixels = int(mask.sum())
            if pixels < self.min_pixels:
                continue
            ious = {shape: _template_iou(mask, shape) for shape in SHAPES}
            box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            found.append((box, ious, pixels))
        return found

    def count(self, image: Image.Image | np.ndarray, label: str) -> int:
        """How many components match ``label`` (``"red circle"``: red ones shaped most like a
        circle; ``"red"``: every red one; ``"circle"``: those of any colour shaped like one)."""
        classes = self.classify_pixels(image)
        colour, shape = self.parse_label(label)
        return sum(shape is None or max(ious, key=ious.get) == shape
                   for name in ([colour] if colour else self._colour_names)
                   for _, ious, _ in self.components(classes, name))

    def detect(self, image: Image.Image, labels: Sequence[str]) -> dict[str, Detection | None]:
        """Best detection per label, or None when no component of that colour and shape exists."""
        classes = self.classify_pixels(image)
        cache: dict[str, list] = {}
        results: dict[str, Detection | None] = {}
        for label in labels:
            colour, shape = self.parse_label(label)
            best: Detection | None = None
            best_pixels = -1
            for name in ([colour] if colour else self._colour_names):
                if name not in cache:
                    cache[name] = self.components(classes, name)
                for box, ious, pixels in cache[name]:
                    kind = max(ious, key=ious.get)
                    if shape is not None and kind != shape:
                        continue
                    if pixels > best_pixels:
                        best, best_pixels = Detection(label, box, ious[shape or kind]), pixels
            results[label] = best
        return results


def _template_iou(mask: np.ndarray, shape: str) -> float:
    """IoU of a component's mask (cropped to its box) with ``shape`` filling that box.

    Also tries the shape one pixel larger on every side, cut to the box, and keeps the better
    match, less a small penalty so that exact fits win ties on clean renders (tiny circles cut
    to their box look square): blur and JPEG erase thin tips (a diamond's corners), which
    shrinks the box.
    """
    height, width = mask.shape
    best = 0.0
    for grow, penalty in ((0, 0.0), (1, _GROWN_PENALTY)):
        template = shape_template(shape, width + 2 * grow, height + 2 * grow)[grow:grow + height, grow:grow + width]
        best = max(best, float((mask & template).sum() / (mask | template).sum()) - penalty)
    return best


def _component_slices(labels: np.ndarray, count: int) -> list[tuple[slice, slice] | None]:
    """Bounding slices of components 1..count (``scipy.ndimage.find_objects``)."""
    from scipy import ndimage   # imported when used, like label_components
    return ndimage.find_objects(labels, max_label=count)
