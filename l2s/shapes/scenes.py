"""The shapes world: seeded synthetic scenes of flat coloured shapes, and their exact detector.

Scenes are a few non-overlapping shapes (square bounding boxes, fully inside the canvas) on a
plain light background, drawn without anti-aliasing so every object pixel has exactly its
palette colour. Relations between objects follow GenEval's rule
(:func:`l2s.evaluation.geneval_relations`). :class:`ShapesDetector` reads objects back by colour
segmentation and template matching, tolerant of the colour noise and blur of generated images.
It is the judge for models trained on this world, where no open-vocabulary detector is needed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from l2s.errors import L2SError, UnsupportedRelationError
from l2s.evaluation import Box, Detection, Detector, geneval_relations, label_components
from l2s.relations import DIAGONAL, DIRECTIONAL, PROMPT_PHRASE, canonical_class

SHAPES = ("circle", "square", "triangle", "diamond")
# Far apart in RGB (min pairwise distance ≈ 116, ≥ 200 from the background) so nearest-colour
# classification survives generation noise.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 200, 210),
}
BACKGROUND = (245, 245, 245)
_GROWN_PENALTY = 0.03  # see _template_iou
GAP = 2  # free pixels kept between objects, so same-coloured objects never touch


@dataclass(frozen=True)
class SceneObject:
    """One shape: its kind, palette colour and pixel box (right/bottom edges exclusive)."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """The object's label, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """A square canvas of ``size`` pixels with its objects."""

    size: int
    objects: list[SceneObject] = field(default_factory=list)

    def relations(self) -> list[tuple[int, str, int]]:
        """``(i, relation, j)`` for every ordered pair where exactly one of the four directions holds
        under GenEval's rule (pairs with no relation, or a diagonal, are ambiguous and left out)."""
        found = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j:
                    continue
                axis = geneval_relations(a.box, b.box) & set(DIRECTIONAL)
                if len(axis) == 1:
                    found.append((i, axis.pop(), j))
        return found

    def caption(self, mention_relation: bool = False,
                relation: tuple[int, str, int] | None = None) -> str:
        """A caption listing the objects, e.g. ``"a red circle and a blue square"``.

        With ``mention_relation`` it states one relation (``relation``, default the first of
        :meth:`relations`) as ``"a red circle to the left of a blue square"``; any other objects
        follow as a second sentence, so the relation clause stays a clean "A r B".
        """
        def listing(names: list[str]) -> str:
            named = [f"a {n}" for n in names]
            return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]

        if not mention_relation:
            return listing([o.name for o in self.objects])
        if relation is None:
            clean = self.relations()
            if not clean:
                raise L2SError("this scene has no clean relation to mention")
            relation = clean[0]
        i, rel, j = relation
        text = f"a {self.objects[i].name} {PROMPT_PHRASE[canonical_class(rel)]} a {self.objects[j].name}"
        others = [o.name for k, o in enumerate(self.objects) if k not in (i, j)]
        return text + (f". {listing(others)}" if others else "")

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size,
                "objects": [{"shape": o.shape, "colour": o.colour, "box": list(o.box)} for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(data["size"], [SceneObject(o["shape"], o["colour"], tuple(o["box"])) for o in data["objects"]])


def _check_names(shapes: Sequence[str], colours: Sequence[str]) -> None:
    for shape in shapes:
        if shape not in SHAPES:
            raise L2SError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    for colour in colours:
        if colour not in COLOURS:
            raise L2SError(f"unknown colour {colour!r} (known: {', '.join(COLOURS)})")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], fill) -> None:
    """Rasterise one shape so that its pixels exactly span ``box`` (checked in the tests)."""
    x1, y1, x2, y2 = box
    right, bottom = x2 - 1, y2 - 1  # PIL coordinates are inclusive
    cx, cy = (x1 + right) / 2, (y1 + bottom) / 2
    if shape == "square":
        draw.rectangle([x1, y1, right, bottom], fill=fill)
    elif shape == "circle":
        draw.ellipse([x1, y1, right, bottom], fill=fill)
    elif shape == "triangle":  # apex up
        draw.polygon([(cx, y1), (right, bottom), (x1, bottom)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (right, cy), (cx, bottom), (x1, cy)], fill=fill)
    else:
        raise L2SError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")


def render(scene: Scene, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Draw the scene as an RGB image (no anti-aliasing: object pixels are exact palette colours)."""
    image = Image.new("RGB", (scene.size, scene.size), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return image


def render_array(scene: Scene, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """:func:`render` as a ``uint8`` array of shape (size, size, 3)."""
    return np.asarray(render(scene, background), dtype=np.uint8)


@lru_cache(maxsize=4096)
def shape_template(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean mask of ``shape`` drawn to fill a ``width × height`` box (read-only, cached)."""
    canvas = Image.new("L", (width, height), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, (0, 0, width, height), 1)
    mask = np.asarray(canvas, dtype=bool)
    mask.flags.writeable = False
    return mask


def _default_sizes(size: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    low = min_size if min_size is not None else max(5, round(size * 0.15))
    high = max_size if max_size is not None else max(low, round(size * 0.35))
    if not 1 <= low <= high <= size:
        raise L2SError(f"object sizes {low}..{high} do not fit a {size}-pixel canvas")
    return low, high


def _separated(box: Sequence[int], others: Sequence[Sequence[int]], gap: int = GAP) -> bool:
    x1, y1, x2, y2 = box
    return all(x2 + gap <= a1 or a2 + gap <= x1 or y2 + gap <= b1 or b2 + gap <= y1
               for a1, b1, a2, b2 in others)


def random_scene(rng: np.random.Generator, size: int = 64, n_objects: int | tuple[int, int] = (2, 5),
                 min_size: int | None = None, max_size: int | None = None, distinct: bool = True,
                 require_clean_pair: bool = False, allowed_shapes: Sequence[str] | None = None,
                 allowed_colours: Sequence[str] | None = None, max_tries: int = 1000) -> Scene:
    """A random scene drawn from ``rng`` (same generator state → same scene).

    ``n_objects`` is a count or an inclusive ``(low, high)`` range; object sides are drawn from
    ``min_size..max_size`` (default 15 %..35 % of the canvas); objects lie fully inside the canvas
    with at least ``GAP`` free pixels between their boxes. ``distinct`` forbids two objects with the
    same colour and shape; ``require_clean_pair`` redraws until some pair has a clean relation.
    """
    shapes = tuple(allowed_shapes or SHAPES)
    colours = tuple(allowed_colours or COLOURS)
    _check_names(shapes, colours)
    low, high = _default_sizes(size, min_size, max_size)
    n_low, n_high = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if distinct and n_high > len(shapes) * len(colours):
        raise L2SError(f"cannot place {n_high} distinct objects with {len(shapes)} shapes × {len(colours)} colours")
    for _ in range(max_tries):
        count = int(rng.integers(n_low, n_high, endpoint=True))
        kinds = [(shapes[k // len(colours)], colours[k % len(colours)])
                 for k in rng.choice(len(shapes) * len(colours), size=count, replace=not distinct)]
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(count):
            for _ in range(100):  # rejection sampling of a free spot
                side = int(rng.integers(low, high, endpoint=True))
                x, y = (int(v) for v in rng.integers(0, size - side, size=2, endpoint=True))
                box = (x, y, x + side, y + side)
                if _separated(box, boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) < count:
            continue  # too crowded: start the scene again
        scene = Scene(size, [SceneObject(s, c, b) for (s, c), b in zip(kinds, boxes)])
        if not require_clean_pair or scene.relations():
            return scene
    raise L2SError(f"could not build a scene in {max_tries} tries (canvas too small for the objects?)")


def _relation_is_clean(box_a: Box, box_b: Box, relation: str) -> bool:
    """Exactly ``relation`` holds (a direction alone, or a diagonal with its two axes)."""
    axis = geneval_relations(box_a, box_b) & set(DIRECTIONAL)
    if relation in DIRECTIONAL:
        return axis == {relation}
    return relation in geneval_relations(box_a, box_b)


def scene_for_relation(rng: np.random.Generator, subject: tuple[str, str], relation: str,
                       object: tuple[str, str], size: int = 64, min_size: int | None = None,
                       max_size: int | None = None, max_tries: int = 10000) -> Scene:
    """A two-object scene where ``subject`` (shape, colour) is cleanly ``relation`` of ``object``.

    Directional relations hold alone (no second axis); a diagonal holds with both its axes.
    """
    rel = canonical_class(relation)
    if rel not in DIRECTIONAL + DIAGONAL:
        raise UnsupportedRelationError(f"{relation!r} is not a directional relation")
    _check_names([subject[0], object[0]], [subject[1], object[1]])
    if tuple(subject) == tuple(object):
        raise L2SError(f"subject and object are both a {subject[1]} {subject[0]}: "
                       "the detector could not tell them apart")
    low, high = _default_sizes(size, min_size, max_size)
    for _ in range(max_tries):
        boxes = []
        for _ in range(2):
            side = int(rng.integers(low, high, endpoint=True))
            x, y = (int(v) for v in rng.integers(0, size - side, size=2, endpoint=True))
            boxes.append((x, y, x + side, y + side))
        if _separated(boxes[0], boxes[1:]) and _relation_is_clean(boxes[0], boxes[1], rel):
            return Scene(size, [SceneObject(subject[0], subject[1], boxes[0]),
                                SceneObject(object[0], object[1], boxes[1])])
    raise L2SError(f"could not place two objects {relation!r} each other on a {size}-pixel canvas")


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
        labels, count = label_components(classes == self._colour_names.index(colour) + 1, connectivity=8)
        found = []
        for index, region in enumerate(_component_slices(labels, count), start=1):
            if region is None:
                continue
            rows, cols = region
            mask = labels[rows, cols] == index
            pixels = int(mask.sum())
            if pixels < self.min_pixels:
                continue
            height, width = mask.shape
            ious = {shape: _template_iou(mask, shape) for shape in SHAPES}
            box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            found.append((box, ious, pixels))
        return found

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
    """Bounding slices of components 1..count (scipy's ``find_objects`` when available)."""
    try:
        from scipy import ndimage
    except ImportError:
        slices = []
        for index in range(1, count + 1):
            ys, xs = np.nonzero(labels == index)
            slices.append((slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if len(ys) else None)
        return slices
    return ndimage.find_objects(labels, max_label=count)
