"""The shapes world: seeded synthetic scenes of flat coloured shapes, and their rendering.

Scenes are a few non-overlapping shapes (square bounding boxes, fully inside the canvas) on a
plain light background, drawn without anti-aliasing so every object pixel has exactly its
palette colour. Relations between objects follow GenEval's rule
(:func:`l2s.evaluation.geneval_relations`); :mod:`.detector` reads the objects back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from l2s.errors import L2SError, UnsupportedRelationError
from l2s.evaluation import Box, geneval_relations
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
