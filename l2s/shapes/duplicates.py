"""An object of a shapes-world image painted once more at a free place.

The duplicated-object losers of the preference pairs: the prompt names one red circle, the loser
shows the winner with a second one. The GenEval rule still passes such an image (an object counts
as present if at least one instance is), which is how a policy can game it by drawing extra copies.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, find_objects

from l2s.evaluation import label_components

from .detector import ShapesDetector


def paint_duplicate(image: np.ndarray, label: str, others: list[str], detector: ShapesDetector,
                    rng: np.random.Generator, tries: int = 64) -> np.ndarray | None:
    """``image`` (H, W, 3 uint8) with the object ``label`` (and its blended edge) copied to a random
    place that is background with a 2-pixel margin; None when the object is not found or touches the
    image border, no place is free in ``tries`` draws, or the detector does not then see one more
    ``label`` and every one of ``others`` (the prompt's other objects)."""
    found = detector.detect(Image.fromarray(image), [label])[label]
    if found is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in found.box)
    if min(x0, y0) == 0 or x1 == image.shape[1] or y1 == image.shape[0]:
        return None   # the border may cut it: a copy inside the image would show the straight cut
    classes = detector.classify_pixels(image)
    mask = _object_mask(detector, classes, label, (y0, y1, x0, x1))
    source = image[y0 - 1:y1 + 1, x0 - 1:x1 + 1]   # the box and the one-pixel ring of its blended edge
    height, width = mask.shape
    occupied = binary_dilation(classes != 0, iterations=2)
    for _ in range(tries):
        top, left = int(rng.integers(0, image.shape[0] - height + 1)), int(rng.integers(0, image.shape[1] - width + 1))
        if occupied[top:top + height, left:left + width].any():
            continue
        painted = image.copy()
        painted[top:top + height, left:left + width][mask] = source[mask]
        return painted if _one_more(detector, image, painted, label, others) else None
    return None


def _object_mask(detector: ShapesDetector, classes: np.ndarray, label: str, box: tuple[int, int, int, int]):
    """What to copy of the object in ``box`` (y0, y1, x0, x1), over the box grown by a pixel (the
    blended edge, whose blur the classes may call another colour): the pixels within two of the
    object, but not any other object (a blob of ``min_pixels`` or more, same colour or not) and the
    pixel around it."""
    y0, y1, x0, x1 = box
    colour = classes == detector.colour_class(detector.parse_label(label)[0])
    own = np.pad(_component(colour, box), 1)
    labels, count = label_components((classes[y0 - 1:y1 + 1, x0 - 1:x1 + 1] != 0) & ~own, connectivity=8)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    foreign = (sizes >= detector.min_pixels)[labels] & (labels > 0)
    near = binary_dilation(own, np.ones((3, 3), bool), iterations=2)   # reaches the corners of the grown box
    return own | (near & ~binary_dilation(foreign, np.ones((3, 3), bool)))


def _component(colour: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The mask, cropped to ``box`` (y0, y1, x0, x1), of the largest component of ``colour`` whose
    bounding box is ``box``: the detected object alone, not another blob of its colour in its box."""
    labels, count = label_components(colour, connectivity=8)
    y0, y1, x0, x1 = box
    crop = labels[y0:y1, x0:x1]
    spans = find_objects(labels, max_label=count)
    fits = [k + 1 for k, s in enumerate(spans) if s == (slice(y0, y1), slice(x0, x1))]
    return crop == max(fits, key=lambda k: int((crop == k).sum()))


def _one_more(detector: ShapesDetector, before: np.ndarray, after: np.ndarray, label: str, others: list[str]) -> bool:
    """Whether ``after`` shows one more ``label`` than ``before`` and still every one of ``others``."""
    found = detector.detect(Image.fromarray(after), others)
    return (detector.count(after, label) == detector.count(before, label) + 1
            and all(found[name] is not None for name in others))
