"""Geometric relation rules: does "A <relation> B" hold for two boxes?

* GenEval's ``relative_position`` (:func:`geneval_relations`): centre offset shrunk by a margin
  proportional to the box sizes, then compared against ±0.5 of the unshrunk offset length.
* T2I-CompBench's ``determine_position`` (:func:`t2i_compbench_score`): the dominant axis must
  match, with a soft score when the boxes overlap (IoU ≥ 0.1).

Both are implemented from their definitions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l2s.errors import UnsupportedRelationError
from l2s.relations import (
    ABOVE,
    BELOW,
    BOTTOM_LEFT_OF,
    BOTTOM_RIGHT_OF,
    DIAGONAL,
    LEFT_OF,
    NEUTRAL,
    NON_DIRECTIONAL,
    RIGHT_OF,
    TOP_LEFT_OF,
    TOP_RIGHT_OF,
    canonical_class,
)

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in pixels; y grows downward."""

GENEVAL = "geneval"
T2I_COMPBENCH = "t2i_compbench"
RULES = (GENEVAL, T2I_COMPBENCH)
# GenEval's relation words, in its order.
GENEVAL_POSITIONS = (LEFT_OF, RIGHT_OF, ABOVE, BELOW)

# A diagonal holds when both of its axis relations hold.
_DIAGONAL_PARTS = {
    TOP_LEFT_OF: (LEFT_OF, ABOVE), TOP_RIGHT_OF: (RIGHT_OF, ABOVE),
    BOTTOM_LEFT_OF: (LEFT_OF, BELOW), BOTTOM_RIGHT_OF: (RIGHT_OF, BELOW),
}

# T2I-CompBench's phrasings (not class names of any checkpoint, so not in relations.py).
_T2I_PHRASES = {
    "on the left of": LEFT_OF, "on the right of": RIGHT_OF,
    "on the top of": ABOVE, "on top of": ABOVE,
    "on the bottom of": BELOW, "on bottom of": BELOW,
}


def normalise_relation(relation: str) -> str:
    """Canonical directional/diagonal relation, or a non-directional word, for any accepted spelling.

    Accepts canonical names, checkpoint class names ("to the left of"), GenEval's words and
    T2I-CompBench's ("on the top of"). Raises ``UnsupportedRelationError`` otherwise (also for
    the neutral class "is", which is not a relation between two objects).
    """
    key = " ".join(relation.strip().lower().split())
    if key in NON_DIRECTIONAL:
        return key
    if key in _T2I_PHRASES:
        return _T2I_PHRASES[key]
    canonical = canonical_class(key)  # raises UnsupportedRelationError for unknown words
    if canonical == NEUTRAL:
        raise UnsupportedRelationError(f"{relation!r} is not a spatial relation between two objects")
    return canonical


def _centre_and_size(box: Box) -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), np.array([abs(x2 - x1), abs(y2 - y1)])


def geneval_relations(box_a: Box, box_b: Box, margin: float = 0.1, threshold: float = 0.5) -> set[str]:
    """Relations that hold for A relative to B under GenEval's ``relative_position`` rule.

    The centre offset ``cA - cB`` is shrunk on each axis by ``margin * (dA + dB)`` (box sizes on
    that axis, clipped at 0), then divided by the length of the *unshrunk* offset; a component
    strictly beyond ``±threshold`` gives "left of"/"right of" (x) or "above"/"below" (y, image
    coordinates). Several can hold at once; when both axes hold, the diagonal ("top-left of", ...)
    is added too. Nearly coincident centres (shrunk offset < 1e-3 on both axes) give no relation.
    """
    centre_a, size_a = _centre_and_size(box_a)
    centre_b, size_b = _centre_and_size(box_b)
    offset = centre_a - centre_b
    revised = np.sign(offset) * np.maximum(np.abs(offset) - margin * (size_a + size_b), 0.0)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -threshold:
        found.add(LEFT_OF)
    if dx > threshold:
        found.add(RIGHT_OF)
    if dy < -threshold:
        found.add(ABOVE)
    if dy > threshold:
        found.add(BELOW)
    found.update(diag for diag, parts in _DIAGONAL_PARTS.items() if set(parts) <= found)
    return found


def box_iou(box_a: Box, box_b: Box) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    ax1, ay1, ax2, ay2 = box_a
    bx1, by1, bx2, by2 = box_b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


# T2I-CompBench resizes images with torchvision Resize(479, max_size=480) before detecting.
_T2I_SHORT_SIDE, _T2I_MAX_SIDE = 479, 480


def t2i_compbench_scale(image_size: tuple[int, int]) -> float:
    """Factor from an image of ``(width, height)`` to T2I-CompBench's resized detection frame."""
    width, height = image_size
    short, long = min(width, height), max(width, height)
    scale = _T2I_SHORT_SIDE / short
    if long * scale > _T2I_MAX_SIDE:  # torchvision caps the longer side instead
        scale = _T2I_MAX_SIDE / long
    return scale


def t2i_compbench_score(relation: str, box_a: Box, box_b: Box, iou_threshold: float = 0.1,
                        distance_threshold: float = 150.0,
                        image_size: tuple[int, int] | None = None) -> float:
    """T2I-CompBench's 2D-spatial position score in [0, 1] for "A <relation> B".

    With ``Δ = cB − cA``: "left of" needs Δx > 0, "right of" Δx < 0, "above" Δy > 0, "below"
    Δy < 0, and that axis must dominate (|Δ| strictly larger than on the other axis); then the
    score is 1 if IoU < ``iou_threshold`` else ``iou_threshold / IoU``, otherwise 0.
    Non-directional relations ("next to", "near", "on side of", ...) score 1 when |Δx| or |Δy| is
    below ``distance_threshold`` pixels of the benchmark's resized image (pass ``image_size``
    = (width, height) of the image the boxes are in to rescale; ``None`` means the boxes are
    already in that frame), else ``distance_threshold / max(|Δx|, |Δy|)``.
    Diagonal relations have no T2I-CompBench rule: ``UnsupportedRelationError``.
    """
    relation = normalise_relation(relation)
    centre_a, _ = _centre_and_size(box_a)
    centre_b, _ = _centre_and_size(box_b)
    delta_x, delta_y = centre_b - centre_a
    if relation in NON_DIRECTIONAL:
        scale = t2i_compbench_scale(image_size) if image_size is not None else 1.0
        delta_x, delta_y = abs(delta_x) * scale, abs(delta_y) * scale
        if delta_x < distance_threshold or delta_y < distance_threshold:
            return 1.0
        return distance_threshold / max(delta_x, delta_y)
    if relation in DIAGONAL:
        raise UnsupportedRelationError(f"T2I-CompBench has no rule for the diagonal relation {relation!r}")
    along, across = {
        LEFT_OF: (delta_x, delta_y), RIGHT_OF: (-delta_x, delta_y),
        ABOVE: (delta_y, delta_x), BELOW: (-delta_y, delta_x),
    }[relation]
    if along <= 0 or abs(along) <= abs(across):
        return 0.0
    iou = box_iou(box_a, box_b)
    return 1.0 if iou < iou_threshold else iou_threshold / iou


@dataclass(frozen=True)
class Detection:
    """The best box a detector found for one label."""

    label: str
    box: Box
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "box": [float(v) for v in self.box], "score": float(self.score)}


def t2i_compbench_image_score(relation: str, det_a: Detection | None, det_b: Detection | None,
                              image_size: tuple[int, int] | None = None) -> float:
    """T2I-CompBench's per-image score: ``0.25·conf_A + 0.25·conf_B + 0.5·position``.

    With only one object found it is ``0.25·conf``; any score below 0.5 becomes 0 (so in practice
    an image scores only when both objects are found and the relation holds).
    """
    if det_a is not None and det_b is not None:
        position = t2i_compbench_score(relation, det_a.box, det_b.box, image_size=image_size)
        score = 0.25 * det_a.score + 0.25 * det_b.score + 0.5 * position
    elif det_a is not None or det_b is not None:
        score = 0.25 * (det_a or det_b).score
    else:
        score = 0.0
    return score if score >= 0.5 else 0.0
