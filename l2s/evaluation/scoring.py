"""Spatial-accuracy evaluation: geometric relation rules, prompt sets, detectors and run reports.

Two published rules decide whether "A <relation> B" holds for two boxes:

* GenEval's ``relative_position`` (:func:`geneval_relations`): centre offset shrunk by a margin
  proportional to the box sizes, then compared against ±0.5 of the unshrunk offset length.
* T2I-CompBench's ``determine_position`` (:func:`t2i_compbench_score`): the dominant axis must
  match, with a soft score when the boxes overlap (IoU ≥ 0.1).

Both are implemented from their definitions. One deliberate difference from the Learn-to-Steer
evaluation code: multi-relation images are scored **strictly** — every relation is checked on its
own pair; a relation word found for an earlier pair never satisfies a later one.

Detectors are pluggable (:class:`Detector`): :class:`TransformersDetector` loads an
open-vocabulary model (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg) from a local directory;
``l2s.shapes.ShapesDetector`` is the exact detector of the synthetic shapes world.
"""
from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from l2s.errors import L2SError, ModelLoadError, UnsupportedRelationError
from l2s.relations import (
    ABOVE,
    BELOW,
    BOTTOM_LEFT_OF,
    BOTTOM_RIGHT_OF,
    DIAGONAL,
    DIRECTIONAL,
    LEFT_OF,
    NEUTRAL,
    NON_DIRECTIONAL,
    PROMPT_PHRASE,
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


# ----------------------------------------------------------------------------------------------
# Geometric rules
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Checks, prompt specifications and per-image results
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RelationCheck:
    """One relation an image must show: ``subject`` is ``relation`` of ``object``."""

    subject: str
    relation: str
    object: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "relation", normalise_relation(self.relation))


@dataclass(frozen=True)
class PromptSpec:
    """A prompt with the relation checks that score it and a tag for grouping results."""

    prompt: str
    checks: tuple[RelationCheck, ...]
    tag: str = "position"

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def objects(self) -> tuple[str, ...]:
        """Object labels the detector must find, in order of first mention in the checks."""
        seen: dict[str, None] = {}
        for check in self.checks:
            seen.setdefault(check.subject)
            seen.setdefault(check.object)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tag": self.tag, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSpec:
        checks = tuple(RelationCheck(**c) for c in data["checks"])
        return cls(prompt=data["prompt"], checks=checks, tag=data.get("tag", "position"))


@dataclass
class CheckResult:
    """Outcome of one relation check on one image."""

    subject: str
    relation: str
    object: str
    holds: bool
    found: list[str] = field(default_factory=list)  # GenEval relations found (sorted)
    position_score: float | None = None  # T2I-CompBench position score
    reason: str = ""


@dataclass
class ImageResult:
    """Whether one image passes its prompt's checks, with the evidence."""

    correct: bool
    score: float
    reason: str
    checks: list[CheckResult]
    detections: dict[str, Detection | None]
    prompt: str = ""
    tag: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "prompt": self.prompt, "tag": self.tag, "correct": self.correct,
            "score": self.score, "reason": self.reason, "checks": [asdict(c) for c in self.checks],
            "detections": {k: (d.to_dict() if d else None) for k, d in self.detections.items()},
        }


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise L2SError(f"unknown evaluation rule {rule!r} (choose from {', '.join(RULES)})")


def score_image(detections: dict[str, Detection | None], checks: Sequence[RelationCheck],
                rule: str = GENEVAL, image_size: tuple[int, int] | None = None) -> ImageResult:
    """Score one image: correct only if every object was detected and every check holds.

    Each check is evaluated on its own subject/object pair (strict; the published evaluation
    lets a relation found for an earlier pair satisfy a later one). ``rule="geneval"``: a check
    holds when its relation is among :func:`geneval_relations`; ``score`` is 1.0 or 0.0.
    ``rule="t2i_compbench"``: a check holds when its position score is 1 (right dominant axis,
    IoU < 0.1, or near enough for non-directional relations); ``score`` is the mean
    :func:`t2i_compbench_image_score` over the checks (``image_size`` = (width, height) for
    the non-directional distance rule).
    """
    _check_rule(rule)
    if rule == GENEVAL:
        for check in checks:
            if check.relation in NON_DIRECTIONAL:
                raise UnsupportedRelationError(
                    f"GenEval's rule has no verdict for {check.relation!r}; use rule='{T2I_COMPBENCH}'")
    labels = list(dict.fromkeys(lbl for c in checks for lbl in (c.subject, c.object)))
    missing = [lbl for lbl in labels if detections.get(lbl) is None]
    results, scores = [], []
    for check in checks:
        det_s, det_o = detections.get(check.subject), detections.get(check.object)
        if rule == T2I_COMPBENCH:
            scores.append(t2i_compbench_image_score(check.relation, det_s, det_o, image_size))
        if det_s is None or det_o is None:
            absent = [lbl for lbl, d in ((check.subject, det_s), (check.object, det_o)) if d is None]
            results.append(CheckResult(check.subject, check.relation, check.object, False,
                                       reason="not detected: " + ", ".join(absent)))
            continue
        if rule == GENEVAL:
            found = sorted(geneval_relations(det_s.box, det_o.box))
            holds = check.relation in found
            results.append(CheckResult(check.subject, check.relation, check.object, holds, found=found,
                                       reason="" if holds else f"found {', '.join(found) or 'no relation'}"))
        else:
            position = t2i_compbench_score(check.relation, det_s.box, det_o.box, image_size=image_size)
            holds = position >= 1.0
            results.append(CheckResult(check.subject, check.relation, check.object, holds,
                                       position_score=position,
                                       reason="" if holds else f"position score {position:.3f}"))
    correct = not missing and all(r.holds for r in results)
    if correct:
        reason = "ok"
    elif missing:
        reason = "not detected: " + ", ".join(missing)
    else:
        reason = "; ".join(f"{r.subject} not {r.relation} {r.object} ({r.reason})"
                           for r in results if not r.holds)
    score = float(correct) if rule == GENEVAL else (float(np.mean(scores)) if scores else 0.0)
    return ImageResult(correct=correct, score=score, reason=reason, checks=results,
                       detections={lbl: detections.get(lbl) for lbl in labels})


# ----------------------------------------------------------------------------------------------
# Prompt sets
# ----------------------------------------------------------------------------------------------

# GenEval's object_names.txt: the 80 COCO classes in COCO category order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Learn-to-Steer's multi-relation object lists (in-distribution COCO, mixed, out-of-distribution).
L2S_COCO_OBJECTS = (
    "backpack", "bowl", "cat", "skateboard", "bottle", "cake", "tie", "vase", "sheep", "toothbrush",
    "teddy bear", "suitcase", "mouse", "knife", "chair", "umbrella",
)
MIXED_OBJECTS = (
    "backpack", "bowl", "cat", "sneakers", "duck", "robot", "teapot", "vase", "corgi", "mug",
    "furby", "teddy bear", "frog", "mouse", "table", "chair", "umbrella",
)
OOD_OBJECTS = (
    "teapot", "corgi", "furby", "robot", "turtle", "rabbit", "butterfly", "key", "pig", "bee",
    "tiger", "hammer", "monkey", "razor", "snake", "stapler",
)

# GenEval's relation words, in its order.
GENEVAL_POSITIONS = (LEFT_OF, RIGHT_OF, ABOVE, BELOW)


def with_article(name: str) -> str:
    """GenEval's article choice: "an" before a vowel letter, else "a"."""
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _unique_prompts(n: int, capacity: int, draw) -> list[PromptSpec]:
    """Draw until ``n`` distinct prompts (deterministic for a seeded ``draw``)."""
    if n > capacity:
        raise L2SError(f"asked for {n} distinct prompts but only {capacity} exist for these objects")
    specs: dict[str, PromptSpec] = {}
    while len(specs) < n:
        spec = draw()
        specs.setdefault(spec.prompt, spec)
    return list(specs.values())


def geneval_position_prompts(n: int = 100, seed: int = 0,
                             classes: Sequence[str] = COCO_CLASSES) -> list[PromptSpec]:
    """``n`` distinct GenEval-style position prompts ``a photo of a/an A <rel> a/an B``.

    Two different classes and one of GenEval's four relation words per prompt, drawn with
    ``numpy.random.default_rng(seed)``; the check is "A <rel> B".
    """
    rng = np.random.default_rng(seed)
    classes = list(classes)

    def draw() -> PromptSpec:
        idx_a, idx_b = rng.choice(len(classes), size=2, replace=False)
        relation = GENEVAL_POSITIONS[rng.choice(len(GENEVAL_POSITIONS))]
        a, b = classes[idx_a], classes[idx_b]
        return PromptSpec(f"a photo of {with_article(a)} {relation} {with_article(b)}",
                          (RelationCheck(a, relation, b),), tag="position")

    return _unique_prompts(n, len(classes) * (len(classes) - 1) * len(GENEVAL_POSITIONS), draw)


# (objects, relations) -> lengths of the chains "a A r1 a B r2 a C", joined by " and ".
MULTI_RELATION_PATTERNS: dict[tuple[int, int], tuple[int, ...]] = {
    (2, 1): (2,), (3, 2): (3,), (4, 2): (2, 2), (4, 3): (4,), (5, 3): (3, 2),
}


def multi_relation_prompts(n_objects: int, n_relations: int, n: int = 100, seed: int = 0,
                           objects: Sequence[str] = L2S_COCO_OBJECTS) -> list[PromptSpec]:
    """``n`` distinct multi-relation prompts in Learn-to-Steer's patterns.

    Patterns (objects, relations): (2,1) "a A r1 a B"; (3,2) "a A r1 a B r2 a C"; (4,2)
    "a A r1 a B and a C r2 a D"; (4,3) "a A r1 a B r2 a C r3 a D"; (5,3) "a A r1 a B r2 a C and
    a D r3 a E", prefixed "a photo of". Objects are drawn without replacement and the relations
    without replacement from the four directions (worded "to the left of", "above", ...); the
    article is always "a", as in the published prompt files. Each chained pair is one check.
    """
    key = (n_objects, n_relations)
    if key not in MULTI_RELATION_PATTERNS:
        known = ", ".join(f"{o}/{r}" for o, r in MULTI_RELATION_PATTERNS)
        raise L2SError(f"no prompt pattern for {n_objects} objects / {n_relations} relations (known: {known})")
    if len(objects) < n_objects:
        raise L2SError(f"need at least {n_objects} distinct objects, got {len(objects)}")
    chains = MULTI_RELATION_PATTERNS[key]
    rng = np.random.default_rng(seed)
    objects = list(objects)

    def draw() -> PromptSpec:
        names = [objects[i] for i in rng.choice(len(objects), size=n_objects, replace=False)]
        relations = [DIRECTIONAL[i] for i in rng.choice(len(DIRECTIONAL), size=n_relations, replace=False)]
        clauses, checks, start, rel_i = [], [], 0, 0
        for length in chains:
            chain = names[start:start + length]
            text = f"a {chain[0]}"
            for subject, obj in zip(chain, chain[1:]):
                text += f" {PROMPT_PHRASE[relations[rel_i]]} a {obj}"
                checks.append(RelationCheck(subject, relations[rel_i], obj))
                rel_i += 1
            clauses.append(text)
            start += length
        return PromptSpec("a photo of " + " and ".join(clauses), tuple(checks),
                          tag=f"{n_objects}obj_{n_relations}rel")

    capacity = math.perm(len(objects), n_objects) * math.perm(len(DIRECTIONAL), n_relations)
    return _unique_prompts(n, capacity, draw)


# ----------------------------------------------------------------------------------------------
# Detectors
# ----------------------------------------------------------------------------------------------

@runtime_checkable
class Detector(Protocol):
    """Finds the best box for each requested label in an image (``None`` when not found)."""

    def detect(self, image: Image.Image, labels: Sequence[str]) -> dict[str, Detection | None]: ...


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


def clipseg_mask_to_box(probabilities: np.ndarray, image_size: tuple[int, int],
                        threshold: int = 120) -> tuple[Box, float] | None:
    """Learn-to-Steer's CLIPSeg post-processing for one query.

    ``probabilities`` is the sigmoid mask (h, w) in [0, 1]; pixels with ``uint8(p*255) > threshold``
    form the mask, the largest (8-connected) component is boxed and rescaled from the mask's
    grid to ``image_size`` = (width, height). Returns (box, mean probability inside it) or None.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    binary = (probabilities * 255).astype(np.uint8) > threshold
    found = largest_component_box(binary, connectivity=8)
    if found is None:
        return None
    (x1, y1, x2, y2), component = found
    mask_h, mask_w = probabilities.shape
    sx, sy = image_size[0] / mask_w, image_size[1] / mask_h
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy), float(probabilities[component].mean())


def best_detection_per_label(labels: Sequence[str], label_indices: Sequence[int],
                             boxes: Sequence[Sequence[float]], scores: Sequence[float],
                             image_size: tuple[int, int] | None = None) -> dict[str, Detection | None]:
    """Keep the highest-scoring box of each label (``label_indices`` index into ``labels``).

    With ``image_size`` = (width, height) boxes are clipped to the image (detectors may
    predict boxes reaching past the border).
    """
    best: dict[str, Detection | None] = {label: None for label in labels}
    for index, box, score in zip(label_indices, boxes, scores):
        label = labels[int(index)]
        current = best[label]
        if current is None or float(score) > current.score:
            x1, y1, x2, y2 = (float(v) for v in box)
            if image_size is not None:
                width, height = image_size
                x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
                y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            best[label] = Detection(label, (x1, y1, x2, y2), float(score))
    return best


# model_type in config.json -> how to query and post-process it.
_DETECTOR_FAMILIES = {
    "owlv2": "owl", "owlvit": "owl", "grounding-dino": "grounding_dino",
    "mm-grounding-dino": "grounding_dino", "clipseg": "clipseg",
}
_DEFAULT_QUERY = {"owl": "a photo of a {}", "grounding_dino": "a {}.", "clipseg": "a {}"}


class TransformersDetector:
    """Open-vocabulary detector loaded from a local transformers checkpoint directory.

    Supports OWLv2 / OWL-ViT (``post_process_grounded_object_detection``, highest score per
    label), Grounding DINO (one query per label, so every box belongs to that label) and
    CLIPSeg (Learn-to-Steer's rule: sigmoid mask, ``×255 > mask_threshold``, box of the largest
    component; the score is the mean mask probability inside it, and ``threshold`` is not used).
    ``threshold`` defaults to GenEval's detection confidence 0.3. Never downloads: a missing or unreadable
    directory raises ``ModelLoadError``.
    """

    def __init__(self, path: str | Path, threshold: float = 0.3, device: str = "cpu",
                 query_template: str | None = None, mask_threshold: int = 120) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no detector checkpoint at {path} (expected a directory with config.json; "
                                 "download it elsewhere and pass its local path)")
        try:
            from transformers import (
                AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor,
                CLIPSegForImageSegmentation,
            )
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            family = _DETECTOR_FAMILIES.get(config.model_type)
            if family is None:
                raise ModelLoadError(f"unsupported detector type {config.model_type!r} at {path} "
                                     f"(supported: {', '.join(_DETECTOR_FAMILIES)})")
            model_class = CLIPSegForImageSegmentation if family == "clipseg" else AutoModelForZeroShotObjectDetection
            self.model = model_class.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - any loading failure is the user's file problem
            raise ModelLoadError(f"cannot load detector from {path}: {error}") from error
        self.family = family
        self.threshold = threshold
        self.device = device
        self.query_template = query_template or _DEFAULT_QUERY[family]
        self.mask_threshold = mask_threshold

    def detect(self, image: Image.Image, labels: Sequence[str]) -> dict[str, Detection | None]:
        """Best box per label (``None`` below the threshold or not found)."""
        import torch

        labels = list(dict.fromkeys(labels))
        if not labels:
            return {}
        image = image.convert("RGB")
        with torch.no_grad():
            if self.family == "owl":
                return self._detect_owl(image, labels)
            if self.family == "grounding_dino":
                return self._detect_grounding_dino(image, labels)
            return self._detect_clipseg(image, labels)

    def _detect_owl(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        queries = [self.query_template.format(label) for label in labels]
        inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(image.height, image.width)],
            text_labels=[labels])[0]
        return best_detection_per_label(labels, result["labels"].tolist(), result["boxes"].tolist(),
                                        result["scores"].tolist(), image.size)

    def _detect_grounding_dino(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        found: dict[str, Detection | None] = {}
        for label in labels:  # one query each: decoded phrases need no matching back to labels
            inputs = self.processor(images=image, text=self.query_template.format(label).lower(),
                                    return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.threshold,
                target_sizes=[(image.height, image.width)])[0]
            found.update(best_detection_per_label([label], [0] * len(result["scores"]),
                                                  result["boxes"].tolist(), result["scores"].tolist(), image.size))
        return found

    def _detect_clipseg(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        import torch

        queries = [self.query_template.format(label) for label in labels]
        inputs = self.processor(text=queries, images=[image] * len(queries), padding="max_length",
                                return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits
        probabilities = torch.sigmoid(logits.reshape(len(queries), *logits.shape[-2:])).cpu().numpy()
        found: dict[str, Detection | None] = {}
        for label, mask in zip(labels, probabilities):
            boxed = clipseg_mask_to_box(mask, image.size, self.mask_threshold)
            found[label] = Detection(label, *boxed) if boxed else None
        return found


# ----------------------------------------------------------------------------------------------
# Runs: per-image files, summary and contact sheet
# ----------------------------------------------------------------------------------------------

@dataclass
class Summary:
    """Aggregate of an evaluation run."""

    rule: str
    n_images: int
    n_correct: int
    mean_score: float
    per_relation: dict[str, list[int]]  # relation -> [checks that hold, checks]
    per_tag: dict[str, list[int]]  # tag -> [correct images, images]
    n_prompts: int
    n_prompts_any_correct: int
    results: list[ImageResult] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        """Share of correct images (GenEval's headline number)."""
        return self.n_correct / self.n_images if self.n_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        ratio = lambda pair: pair[0] / pair[1] if pair[1] else 0.0  # noqa: E731
        return {
            "rule": self.rule, "n_images": self.n_images, "n_correct": self.n_correct,
            "accuracy": self.accuracy, "mean_score": self.mean_score,
            "n_prompts": self.n_prompts, "n_prompts_any_correct": self.n_prompts_any_correct,
            "prompt_accuracy": self.n_prompts_any_correct / self.n_prompts if self.n_prompts else 0.0,
            "per_relation": {k: {"holds": v[0], "total": v[1], "accuracy": ratio(v)}
                             for k, v in self.per_relation.items()},
            "per_tag": {k: {"correct": v[0], "total": v[1], "accuracy": ratio(v)}
                        for k, v in self.per_tag.items()},
        }

    def table(self) -> str:
        """A printable table: overall, per tag and per relation."""
        rows = [("overall (images)", self.n_correct, self.n_images)]
        rows += [(f"tag {tag}", c, t) for tag, (c, t) in sorted(self.per_tag.items())]
        rows += [(f"relation {rel}", c, t) for rel, (c, t) in sorted(self.per_relation.items())]
        rows.append(("prompts with any correct", self.n_prompts_any_correct, self.n_prompts))
        width = max(len(name) for name, _, _ in rows)
        lines = [f"{'group':<{width}}  {'correct':>7}  {'total':>5}  {'accuracy':>8}",
                 "-" * (width + 27)]
        for name, correct, total in rows:
            accuracy = correct / total if total else 0.0
            lines.append(f"{name:<{width}}  {correct:>7}  {total:>5}  {accuracy:>8.3f}")
        lines.append(f"{'mean score (' + self.rule + ')':<{width}}  {'':>7}  {'':>5}  {self.mean_score:>8.3f}")
        return "\n".join(lines)


def summarise(results: Sequence[ImageResult], rule: str = GENEVAL) -> Summary:
    """Aggregate per-image results (per relation counts checks, per tag counts images)."""
    per_relation: dict[str, list[int]] = {}
    per_tag: dict[str, list[int]] = {}
    prompts: dict[str, bool] = {}
    for result in results:
        tag = per_tag.setdefault(result.tag, [0, 0])
        tag[0] += int(result.correct)
        tag[1] += 1
        prompts[result.prompt] = prompts.get(result.prompt, False) or result.correct
        for check in result.checks:
            rel = per_relation.setdefault(check.relation, [0, 0])
            rel[0] += int(check.holds)
            rel[1] += 1
    return Summary(
        rule=rule, n_images=len(results), n_correct=sum(r.correct for r in results),
        mean_score=float(np.mean([r.score for r in results])) if results else 0.0,
        per_relation=per_relation, per_tag=per_tag, n_prompts=len(prompts),
        n_prompts_any_correct=sum(prompts.values()), results=list(results))


@dataclass(frozen=True)
class PairedComparison:
    """Two settings scored on the same (prompt, seed) images: how often each alone was right.

    ``p_value`` is the exact two-sided sign test on the discordant pairs (McNemar's exact test):
    the chance of a split at least this uneven if neither setting were better.
    """

    n_pairs: int
    a_correct: int
    b_correct: int
    a_only: int
    b_only: int

    @property
    def p_value(self) -> float:
        discordant = self.a_only + self.b_only
        if discordant == 0:
            return 1.0
        tail = sum(math.comb(discordant, k) for k in range(min(self.a_only, self.b_only) + 1))
        return min(1.0, 2 * tail / 2 ** discordant)

    def a_better(self, alpha: float = 0.05) -> bool:
        """``a`` measurably better: more pairs won alone, and the split unlikely under no difference."""
        return self.a_only > self.b_only and self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        return {"n_pairs": self.n_pairs, "a_correct": self.a_correct, "b_correct": self.b_correct,
                "a_only": self.a_only, "b_only": self.b_only, "p_value": self.p_value}


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> PairedComparison:
    """Compare per-image correctness of two settings (keys identify the same prompt and seed);
    only keys present in both count."""
    keys = sorted(set(a) & set(b))
    return PairedComparison(
        n_pairs=len(keys), a_correct=sum(bool(a[k]) for k in keys), b_correct=sum(bool(b[k]) for k in keys),
        a_only=sum(bool(a[k]) and not b[k] for k in keys), b_only=sum(bool(b[k]) and not a[k] for k in keys))


def evaluate_images(records: Iterable[tuple[Image.Image, PromptSpec, dict[str, Any]]], detector: Detector,
                    out_dir: str | Path, rule: str = GENEVAL) -> Summary:
    """Detect, score and record every image of a run.

    ``records`` yields ``(image, spec, meta)``; ``meta["name"]`` (default: the running index,
    ``00000``) names the per-image file ``<out_dir>/<name>.json``; the rest of ``meta`` (seed,
    method, ...) is stored with the result. Also writes ``results.jsonl`` (one line per image)
    and ``summary.json``, and returns the :class:`Summary`.
    """
    _check_rule(rule)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ImageResult] = []
    with open(out_dir / "results.jsonl", "w", encoding="utf-8") as lines:
        for index, (image, spec, meta) in enumerate(records):
            meta = dict(meta or {})
            name = str(meta.pop("name", f"{index:05d}"))
            detections = detector.detect(image, spec.objects)
            result = score_image(detections, spec.checks, rule=rule, image_size=image.size)
            result.prompt, result.tag, result.name = spec.prompt, spec.tag, name
            results.append(result)
            record = {**result.to_dict(), "meta": meta}
            (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
            lines.write(json.dumps(record, default=str) + "\n")
    summary = summarise(results, rule)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    return summary


_BOX_COLOURS = ((255, 140, 0), (0, 160, 255), (200, 0, 200), (120, 80, 0), (0, 120, 60))


def contact_sheet(images: Sequence[Image.Image], results: Sequence[ImageResult], path: str | Path,
                  columns: int = 8, scale: float | None = None) -> Path:
    """Save a PNG grid: each image with its detected boxes, a green (pass) or red (fail) border
    and its prompt and reason underneath. ``scale=None`` enlarges or shrinks images to ~256 px."""
    if len(images) != len(results):
        raise ValueError("contact_sheet needs one result per image")
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if scale is None:
        scale = 256 / max(max(img.size) for img in images)
    font = ImageFont.load_default()
    border, text_lines, line_height = 4, 4, 12
    cell_w = max(round(img.width * scale) for img in images) + 2 * border
    cell_h = max(round(img.height * scale) for img in images) + 2 * border + text_lines * line_height + 4
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars_per_line = max(8, int(cell_w / 6.5))
    for i, (image, result) in enumerate(zip(images, results)):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        tile = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                           Image.NEAREST)
        tile_draw = ImageDraw.Draw(tile)
        for j, (label, det) in enumerate(result.detections.items()):
            if det is None:
                continue
            colour = _BOX_COLOURS[j % len(_BOX_COLOURS)]
            x1, y1, x2, y2 = (v * scale for v in det.box)
            tile_draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=2)
            tile_draw.text((x1 + 2, y1 + 1), label, fill=colour, font=font)
        edge = (0, 170, 0) if result.correct else (210, 0, 0)
        draw.rectangle([x0, y0, x0 + tile.width + 2 * border - 1, y0 + tile.height + 2 * border - 1], fill=edge)
        sheet.paste(tile, (x0 + border, y0 + border))
        caption = textwrap.wrap(f"{result.prompt} [{result.reason}]", chars_per_line)[:text_lines]
        for k, line in enumerate(caption):
            draw.text((x0 + 2, y0 + tile.height + 2 * border + 2 + k * line_height), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
