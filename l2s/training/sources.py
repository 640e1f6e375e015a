"""Labelled relations for the classifier's training data (each source yields :class:`RelationSample`s).

* :func:`l2s.training.gqa_samples` — GQA scene graphs (:mod:`.gqa`).
* :func:`coco_samples` — COCO-style instance boxes: relations between single-instance categories
  from GenEval's geometric rule (exactly one of the four directions), or diagonal labels from
  45-degree sectors of the box-centre angle; heavily overlapping boxes are discarded.
* :func:`prompt_pair_samples` — (image, prompt) pairs whose prompt the relation parser understands.

Train/val splits are drawn per *source image* (:func:`split_of`), so no image is in both splits.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2s.errors import L2SError, PromptError
from l2s.evaluation import box_iou, geneval_relations
from l2s.relations import (
    BOTTOM_LEFT_OF,
    BOTTOM_RIGHT_OF,
    DIRECTIONAL,
    TOP_LEFT_OF,
    TOP_RIGHT_OF,
    canonical_class,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelationSample:
    """One labelled relation in one image: ``subject`` is ``relation`` of ``object``.

    For the neutral class (``relation`` "is") ``subject`` is the noun and ``object`` its attribute
    ("car", "is", "white" -> prompt "A white car", maps of car and white). ``relation`` may be any
    spelling :func:`l2s.relations.canonical_class` accepts. ``image`` is a file path or an image.
    """

    image_id: str
    image: Any  # str | Path | PIL.Image.Image
    subject: str
    relation: str
    object: str
    source: str = "custom"

    @property
    def key(self) -> str:
        """Stable identity of the sample (independent of its position in any list)."""
        return f"{self.source}:{self.image_id}:{self.subject}|{canonical_class(self.relation)}|{self.object}"


def digest(text: str) -> str:
    """Hex SHA-256 of ``text``: the stable hash behind seeds, splits and record ids."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_seed(seed: int, sample: RelationSample) -> int:
    """The per-sample seed (inversion noise, wrong-relation draw): a function of the sample only."""
    return int(digest(f"{seed}:{sample.key}")[:8], 16) & 0x7FFFFFFF


def split_of(image_id: str, seed: int, val_fraction: float) -> str:
    """'val' or 'train' for a source image: a seeded hash, so all samples of an image share it."""
    unit = int(digest(f"split:{seed}:{image_id}")[:13], 16) / float(16 ** 13)
    return "val" if unit < val_fraction else "train"


def clean_name(name: str) -> str:
    """An annotation's object name, lower-cased with single spaces."""
    return " ".join(str(name).strip().lower().split())


def load_annotations(path: str | Path) -> Any:
    """A JSON annotation file (``L2SError`` when missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise L2SError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise L2SError(f"cannot read annotation file {path}: {error}") from None


# Centre angle (degrees, counter-clockwise from +x with y pointing up) of each diagonal sector.
_DIAGONAL_ANGLES = {TOP_RIGHT_OF: 45.0, TOP_LEFT_OF: 135.0, BOTTOM_LEFT_OF: 225.0, BOTTOM_RIGHT_OF: 315.0}


def diagonal_relation(box_a: Sequence[float], box_b: Sequence[float], sector_width: float = 45.0) -> str | None:
    """The diagonal relation of box A relative to box B (``x1, y1, x2, y2``, y down), or None.

    A holds when the angle of the centre offset ``cA - cB`` lies within ``sector_width`` degrees
    centred on that diagonal (45 degrees: within 22.5 degrees of it).
    """
    dx = (box_a[0] + box_a[2]) / 2 - (box_b[0] + box_b[2]) / 2
    dy = (box_a[1] + box_a[3]) / 2 - (box_b[1] + box_b[3]) / 2
    if dx == 0 and dy == 0:
        return None
    angle = math.degrees(math.atan2(-dy, dx)) % 360.0  # flip y: image y grows downward
    for relation, centre in _DIAGONAL_ANGLES.items():
        if abs((angle - centre + 180.0) % 360.0 - 180.0) <= sector_width / 2:
            return relation
    return None



def coco_samples(
    instances: str | Path | dict,
    images_dir: str | Path,
    *,
    diagonal: bool = False,
    max_iou: float | None = 0.3,
    sector_width: float = 45.0,
) -> list[RelationSample]:
    """Labelled relations from COCO-style instance annotations (``instances_*.json`` or a dict).

    Only categories with exactly one (non-crowd) instance in an image take part, so an object
    name always denotes one box. For every ordered pair (A, B): boxes with IoU above ``max_iou``
    are discarded; the label is, for the 4-direction classifier, the GenEval rule's relation when
    exactly one of left/right/above/below holds, and for ``diagonal=True`` the box-centre angle
    sector (:func:`diagonal_relation`). Images are ``images_dir/<file_name>``.
    """
    data = instances if isinstance(instances, dict) else load_annotations(instances)
    try:
        categories = {c["id"]: clean_name(c["name"]) for c in data["categories"]}
        images = {img["id"]: img for img in data["images"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as error:
        raise L2SError(f"not a COCO instances file (missing {error})") from None
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in annotations:
        per_image[ann["image_id"]].append(ann)
    images_dir = Path(images_dir)
    samples: list[RelationSample] = []
    for image_id in sorted(per_image, key=str):
        if image_id not in images:
            continue
        boxes = _single_instance_boxes(per_image[image_id], categories)
        path = images_dir / images[image_id]["file_name"]
        for name_a in sorted(boxes):
            for name_b in sorted(boxes):
                if name_a == name_b:
                    continue
                relation = _box_pair_relation(boxes[name_a], boxes[name_b], diagonal, max_iou, sector_width)
                if relation is not None:
                    samples.append(RelationSample(str(image_id), path, name_a, relation, name_b, "coco"))
    return samples


def _single_instance_boxes(anns: list[dict], categories: dict) -> dict[str, tuple[float, float, float, float]]:
    """Category name -> box ``(x1, y1, x2, y2)`` of the categories with one non-crowd instance."""
    counts = Counter(a["category_id"] for a in anns)
    crowded = {a["category_id"] for a in anns if a.get("iscrowd")}
    boxes = {}
    for a in anns:
        if counts[a["category_id"]] == 1 and a["category_id"] not in crowded:
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes[categories[a["category_id"]]] = (x, y, x + w, y + h)
    return boxes


def _box_pair_relation(box_a, box_b, diagonal: bool, max_iou: float | None, sector_width: float) -> str | None:
    """The label of box A relative to box B, or None (overlapping, or no single relation)."""
    if max_iou is not None and box_iou(box_a, box_b) > max_iou:
        return None
    if diagonal:
        return diagonal_relation(box_a, box_b, sector_width)
    found = set(geneval_relations(box_a, box_b)) & set(DIRECTIONAL)
    return next(iter(found)) if len(found) == 1 else None


def prompt_pair_samples(pairs: str | Path | Iterable, images_dir: str | Path | None = None,
                        on_skip: Callable[[str, str], None] | None = None) -> list[RelationSample]:
    """Labelled relations from (image, prompt) pairs whose prompt the relation parser understands.

    ``pairs``: a JSONL file (``{"image": path, "prompt": str, "image_id": optional}`` per line),
    or an iterable of such dicts or of ``(image, prompt)`` tuples. Every directional/diagonal
    relation the parser finds becomes one sample (objects as written, adjectives included);
    prompts without one are skipped. Relative image paths resolve against ``images_dir``.
    ``on_skip(where, reason)``: told each skipped pair instead of a log line each and their count
    (a caller that limits and records them: a captions file read as pairs skips every line).
    """
    from l2s.parsing import parse_prompt

    samples: list[RelationSample] = []
    entries = _read_pairs(pairs)
    skipped = 0
    skip = on_skip or (lambda where, reason: log.warning("warning: %s: skipped: %s", where, reason))
    for where, entry in entries:
        if isinstance(entry, dict):
            image, prompt, image_id = entry.get("image"), entry.get("prompt"), entry.get("image_id")
        else:
            (image, prompt), image_id = entry, None
        if image is None or not isinstance(prompt, str):
            skip(where, f"no image or prompt in {entry!r}")
            skipped += 1
            continue
        if isinstance(image, (str, Path)):
            image = Path(image)
            if images_dir is not None and not image.is_absolute():
                image = Path(images_dir) / image
            image_id = image_id or image.stem
        elif image_id is None:
            raise L2SError(f"{where}: in-memory images need an 'image_id'")
        try:
            parsed = parse_prompt(prompt)
        except PromptError as error:
            triplets, reason = (), str(error)
        else:   # the wording 'l2s generate' uses for the same prompt
            triplets, reason = parsed.triplets, f"{parsed.unsteered_reason()} in {prompt!r}"
        if not triplets:
            skip(f"{where} ({image_id})", reason)
            skipped += 1
        for t in triplets:
            samples.append(RelationSample(str(image_id), image, t.subject, t.relation, t.object, "pairs"))
    if skipped and on_skip is None:
        log.warning("warning: %d of %d pairs skipped before inversion (the lines above say why)", skipped,
                    len(entries))
    return samples


def _read_pairs(pairs: str | Path | Iterable) -> list[tuple[str, Any]]:
    """(where, entry) of each entry of a JSONL pairs file (``FILE line N``) or of the given iterable
    (``pair N``)."""
    if not isinstance(pairs, (str, Path)):
        return [(f"pair {number}", entry) for number, entry in enumerate(pairs, 1)]
    entries = []
    with open(pairs, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    entries.append((f"{pairs} line {number}", json.loads(line)))
                except json.JSONDecodeError:
                    raise L2SError(f"{pairs}:{number}: not a JSON line") from None
    return entries


def balance_samples(samples: Sequence[RelationSample], max_per_class: int, seed: int = 0) -> list[RelationSample]:
    """At most ``max_per_class`` samples per relation, seeded, preferring distinct images
    (each image's first sample of a class before any image's second, as the published reduction)."""
    rng = random.Random(seed)
    by_class: dict[str, list[RelationSample]] = defaultdict(list)
    for s in samples:
        by_class[canonical_class(s.relation)].append(s)
    kept: list[RelationSample] = []
    for relation in sorted(by_class):
        group = by_class[relation][:]
        rng.shuffle(group)
        first, rest, seen_images = [], [], set()
        for s in group:
            (rest if s.image_id in seen_images else first).append(s)
            seen_images.add(s.image_id)
        kept += (first + rest)[:max_per_class]
    return kept
