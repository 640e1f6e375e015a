"""The classifier's training data: labelled relations -> dual inversions -> a sharded map dataset.

Sources of labelled relations (each yields :class:`RelationSample`s):

* :func:`gqa_samples` — GQA scene graphs: spatial relations named by GQA ("to the left of", ...)
  and object-attribute pairs for the neutral class "is"; ambiguous objects are dropped (a name that
  occurs twice in the image, or that is a WordNet hypernym/hyponym of another object's name).
* :func:`coco_samples` — COCO-style instance boxes: relations between single-instance categories
  from GenEval's geometric rule (exactly one of the four directions), or diagonal labels from
  45-degree sectors of the box-centre angle; heavily overlapping boxes are discarded.
* :func:`prompt_pair_samples` — (image, prompt) pairs whose prompt the relation parser understands.

:func:`make_dataset` inverts every sample twice (``pos``/``neg`` prompts, :func:`l2s.training.inversion.dual_invert`)
and writes::

    out_dir/
      dataset.json        settings, channels, class names (written once; checked on resume)
      manifest.jsonl      one line per (prompt, stored step): ids, prompt, label, split, shard, key
      skipped.jsonl       samples that produced nothing, with the reason
      progress.json       the commit record (which chunks are complete)
      shards/shard-00000.safetensors   maps (2, C, m, m) of one chunk of samples, key = sample id

Creation is resumable. Samples are processed in fixed chunks (``shard_size`` samples each); a chunk
is committed by (1) writing its shard to a temporary file and renaming it, (2) appending its
manifest / skipped lines, (3) atomically rewriting ``progress.json``. A restarted job drops
everything not covered by a commit (stray shards, torn or uncommitted manifest lines, lines whose
shard vanished) and redoes exactly those chunks. Every random choice is derived from (seed, sample),
never from processing order, so an interrupted and resumed job writes the same bytes as an
uninterrupted one. Train/val splits are drawn per *source image* (seeded hash of the image id), so
no image is in both splits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from l2s.errors import L2SError, PromptError, TokenizationError
from l2s.relations import (
    DIAGONAL,
    DIAGONAL_CLASSES,
    DIRECTIONAL,
    NEUTRAL,
    PUBLISHED_CLASSES,
    TOP_LEFT_OF,
    TOP_RIGHT_OF,
    BOTTOM_LEFT_OF,
    BOTTOM_RIGHT_OF,
    canonical_class,
)

log = logging.getLogger(__name__)

FORMAT = "l2s-attention-maps"
FORMAT_VERSION = 1
META_FILE, MANIFEST_FILE = "dataset.json", "manifest.jsonl"
SKIPPED_FILE, PROGRESS_FILE = "skipped.jsonl", "progress.json"
SHARD_DIR = "shards"
SPLITS = ("train", "val")
# GQA attributes used for the neutral class (published list).
GQA_ATTRIBUTES = ("white", "green", "large", "metal")
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_seed(seed: int, sample: RelationSample) -> int:
    """The per-sample seed (inversion noise, wrong-relation draw): a function of the sample only."""
    return int(_digest(f"{seed}:{sample.key}")[:8], 16) & 0x7FFFFFFF


def split_of(image_id: str, seed: int, val_fraction: float) -> str:
    """'val' or 'train' for a source image: a seeded hash, so all samples of an image share it."""
    unit = int(_digest(f"split:{seed}:{image_id}")[:13], 16) / float(16 ** 13)
    return "val" if unit < val_fraction else "train"


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def wordnet_is_a() -> Callable[[str, str], bool] | None:
    """The published is-a test on WordNet (a hypernym of ``a`` at depth 1-2 is a synset of ``b``),
    or None when nltk or its WordNet corpus is not installed."""
    try:
        from nltk.corpus import wordnet  # type: ignore[import-not-found]

        wordnet.synsets("dog")
    except Exception:  # ImportError, or LookupError when the corpus is missing
        return None

    def is_a(a: str, b: str) -> bool:
        targets = set(wordnet.synsets(b.replace(" ", "_"), pos=wordnet.NOUN))
        for synset in wordnet.synsets(a.replace(" ", "_"), pos=wordnet.NOUN):
            level = set(synset.hypernyms())
            for _ in range(2):
                if level & targets:
                    return True
                level = {h for s in level for h in s.hypernyms()}
        return False

    return is_a


def _load_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise L2SError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise L2SError(f"cannot read annotation file {path}: {error}") from None


def gqa_samples(
    scene_graphs: str | Path | dict | Sequence[str | Path],
    images_dir: str | Path,
    *,
    relations: Sequence[str] = DIRECTIONAL,
    attributes: Sequence[str] = GQA_ATTRIBUTES,
    is_a: Callable[[str, str], bool] | str | None = "wordnet",
    strict_images: bool = False,
) -> list[RelationSample]:
    """Labelled relations from GQA scene graphs (one JSON file, several merged, or a loaded dict).

    GQA format: ``{image_id: {"objects": {obj_id: {"name", "attributes": [...], "relations":
    [{"name", "object": obj_id}, ...]}}}}``. Relation names are mapped to canonical relations and
    kept when in ``relations``; attributes in ``attributes`` give neutral ("is") samples.

    An object is *ambiguous* (never used) when its name occurs more than once in the image, or
    when ``is_a`` says it is a kind of another object's name or vice versa (the published
    hypernym filter; "wordnet" uses nltk's WordNet when installed and otherwise logs a warning and
    skips this filter). ``strict_images`` drops whole images with any repeated name instead.
    Images are expected at ``images_dir/<image_id>.jpg``.
    """
    if isinstance(scene_graphs, dict):
        graphs = scene_graphs
    else:
        paths = [scene_graphs] if isinstance(scene_graphs, (str, Path)) else list(scene_graphs)
        graphs = {}
        for path in paths:  # the published preprocessing merges GQA's train and val graphs
            graphs.update(_load_json(path))
    if is_a == "wordnet":
        is_a = wordnet_is_a()
        if is_a is None:
            log.warning("nltk WordNet is not available: the GQA hypernym filter is skipped "
                        "(pip install nltk and download the 'wordnet' corpus to enable it)")
    wanted = {canonical_class(r) for r in relations}
    attribute_set = {_clean_name(a) for a in attributes}
    images_dir = Path(images_dir)
    samples: list[RelationSample] = []
    for image_id in sorted(graphs):
        objects = graphs[image_id].get("objects", {}) or {}
        names = {oid: _clean_name(obj.get("name", "")) for oid, obj in objects.items()}
        counts = Counter(names.values())
        if strict_images and any(n > 1 for n in counts.values()):
            continue
        ambiguous = {name for name, n in counts.items() if n > 1 or not name}
        if callable(is_a):
            distinct = sorted(counts)
            for a in distinct:
                for b in distinct:
                    if a != b and is_a(a, b):
                        ambiguous.update((a, b))
        path = images_dir / f"{image_id}.jpg"
        seen: set[tuple[str, str, str]] = set()
        for oid in sorted(objects):
            subject = names[oid]
            if subject in ambiguous:
                continue
            for rel in objects[oid].get("relations", []) or []:
                target = names.get(rel.get("object"))
                if target is None or target in ambiguous or target == subject:
                    continue
                try:
                    relation = canonical_class(str(rel.get("name", "")))
                except L2SError:
                    continue  # "on", "holding", ...: not a relation we classify
                if relation in wanted and (subject, relation, target) not in seen:
                    seen.add((subject, relation, target))
                    samples.append(RelationSample(str(image_id), path, subject, relation, target, "gqa"))
            for attribute in objects[oid].get("attributes", []) or []:
                attribute = _clean_name(attribute)
                if attribute in attribute_set and (subject, NEUTRAL, attribute) not in seen:
                    seen.add((subject, NEUTRAL, attribute))
                    samples.append(RelationSample(str(image_id), path, subject, NEUTRAL, attribute, "gqa"))
    return samples


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


def _geneval_rule() -> Callable:
    try:
        from l2s.evaluation import geneval_relations
    except ImportError as error:  # pragma: no cover - the module ships with l2s
        raise L2SError(f"the GenEval rule (l2s.evaluation) is unavailable: {error}") from None
    return geneval_relations


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
    from l2s.evaluation import box_iou

    data = instances if isinstance(instances, dict) else _load_json(instances)
    try:
        categories = {c["id"]: _clean_name(c["name"]) for c in data["categories"]}
        images = {img["id"]: img for img in data["images"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as error:
        raise L2SError(f"not a COCO instances file (missing {error})") from None
    geneval_relations = None if diagonal else _geneval_rule()
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in annotations:
        per_image[ann["image_id"]].append(ann)
    images_dir = Path(images_dir)
    samples: list[RelationSample] = []
    for image_id in sorted(per_image, key=str):
        if image_id not in images:
            continue
        anns = per_image[image_id]
        counts = Counter(a["category_id"] for a in anns)
        crowded = {a["category_id"] for a in anns if a.get("iscrowd")}
        boxes = {}
        for a in anns:
            if counts[a["category_id"]] == 1 and a["category_id"] not in crowded:
                x, y, w, h = (float(v) for v in a["bbox"])
                boxes[categories[a["category_id"]]] = (x, y, x + w, y + h)
        path = images_dir / images[image_id]["file_name"]
        for name_a in sorted(boxes):
            for name_b in sorted(boxes):
                if name_a == name_b:
                    continue
                box_a, box_b = boxes[name_a], boxes[name_b]
                if max_iou is not None and box_iou(box_a, box_b) > max_iou:
                    continue
                if diagonal:
                    relation = diagonal_relation(box_a, box_b, sector_width)
                else:
                    found = set(geneval_relations(box_a, box_b)) & set(DIRECTIONAL)
                    relation = next(iter(found)) if len(found) == 1 else None
                if relation is not None:
                    samples.append(RelationSample(str(image_id), path, name_a, relation, name_b, "coco"))
    return samples


def prompt_pair_samples(pairs: str | Path | Iterable, images_dir: str | Path | None = None) -> list[RelationSample]:
    """Labelled relations from (image, prompt) pairs whose prompt the relation parser understands.

    ``pairs``: a JSONL file (``{"image": path, "prompt": str, "image_id": optional}`` per line),
    or an iterable of such dicts or of ``(image, prompt)`` tuples. Every directional/diagonal
    relation the parser finds becomes one sample (objects as written, adjectives included);
    prompts without one are logged and skipped. Relative image paths resolve against
    ``images_dir``.
    """
    from l2s.parsing import parse_prompt

    if isinstance(pairs, (str, Path)):
        entries = []
        with open(pairs, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise L2SError(f"{pairs}:{number}: not a JSON line") from None
    else:
        entries = list(pairs)
    samples: list[RelationSample] = []
    for entry in entries:
        if isinstance(entry, dict):
            image, prompt, image_id = entry.get("image"), entry.get("prompt"), entry.get("image_id")
        else:
            (image, prompt), image_id = entry, None
        if image is None or not isinstance(prompt, str):
            log.warning("skipping pair without image or prompt: %r", entry)
            continue
        if isinstance(image, (str, Path)):
            image = Path(image)
            if images_dir is not None and not image.is_absolute():
                image = Path(images_dir) / image
            image_id = image_id or image.stem
        elif image_id is None:
            raise L2SError("in-memory images need an 'image_id'")
        try:
            parsed = parse_prompt(prompt)
        except PromptError as error:
            log.warning("skipping %s: %s", image_id, error)
            continue
        if not parsed.triplets:
            log.warning("skipping %s: no spatial relation in %r", image_id, prompt)
        for t in parsed.triplets:
            samples.append(RelationSample(str(image_id), image, t.subject, t.relation, t.object, "pairs"))
    return samples


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


# --------------------------------------------------------------------------------------------
# Dataset creation
# --------------------------------------------------------------------------------------------


class _Skip(Exception):
    """A sample that produces no records; the message is the reason logged in skipped.jsonl."""


@dataclass
class DatasetSummary:
    """What :func:`make_dataset` left on disk."""

    out_dir: Path
    records: int
    samples_done: int
    skipped: int
    split_records: dict[str, int] = field(default_factory=dict)


def _load_image(sample: RelationSample) -> Image.Image:
    if isinstance(sample.image, Image.Image):
        return sample.image
    try:
        with Image.open(sample.image) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise _Skip(f"image not found: {sample.image}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise _Skip(f"unreadable image {sample.image}: {type(error).__name__}: {error}") from None


def _fsync_append(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))  # one write: a kill leaves whole lines or a torn last line
        handle.flush()
        os.fsync(handle.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    """Parsed lines; a torn (unparsable) line and everything after it are ignored."""
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _shard_name(chunk: int) -> str:
    return f"{SHARD_DIR}/shard-{chunk:05d}.safetensors"


class _DatasetWriter:
    """Commits chunks of records (shard + manifest lines + skipped lines) and recovers on restart."""

    def __init__(self, out_dir: Path, meta: dict) -> None:
        self.out_dir = out_dir
        (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        meta_path = out_dir / META_FILE
        if meta_path.exists():
            existing = json.loads(meta_path.read_text())
            if existing.get("settings_hash") != meta["settings_hash"]:
                before = existing.get("settings", {})
                differing = sorted(k for k in meta["settings"] if before.get(k) != meta["settings"][k])
                raise L2SError(f"{out_dir} holds a dataset made with other settings "
                               f"({', '.join(differing) or 'format'}); use a new output directory or the same "
                               f"settings to resume")
        else:
            _atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        self.meta = meta
        self.committed = self._recover()

    def _recover(self) -> dict[int, dict]:
        """Drop everything not covered by progress.json; return the committed chunks."""
        progress_path = self.out_dir / PROGRESS_FILE
        committed = {int(k): v for k, v in json.loads(progress_path.read_text())["chunks"].items()} \
            if progress_path.exists() else {}
        manifest = [r for r in _read_jsonl(self.out_dir / MANIFEST_FILE) if r.get("chunk") in committed]
        skipped = [r for r in _read_jsonl(self.out_dir / SKIPPED_FILE) if r.get("chunk") in committed]
        # A committed chunk is intact only if its shard exists and all its lines are there.
        have = Counter(r["chunk"] for r in manifest if (self.out_dir / r["shard"]).exists())
        have_skipped = Counter(r["chunk"] for r in skipped)
        for chunk, info in list(committed.items()):
            if have[chunk] != info["records"] or have_skipped[chunk] != info["skipped"]:
                log.warning("chunk %d is incomplete on disk (missing shard or lines): redoing it", chunk)
                del committed[chunk]
        manifest = [r for r in manifest if r["chunk"] in committed]
        skipped = [r for r in skipped if r["chunk"] in committed]
        _atomic_write_text(self.out_dir / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for r in manifest))
        _atomic_write_text(self.out_dir / SKIPPED_FILE, "".join(json.dumps(r) + "\n" for r in skipped))
        keep = {_shard_name(c) for c in committed}
        for path in (self.out_dir / SHARD_DIR).iterdir():
            if f"{SHARD_DIR}/{path.name}" not in keep:
                path.unlink()  # uncommitted shard or temporary file of a killed write
        self._write_progress(committed)
        return committed

    def _write_progress(self, committed: dict[int, dict]) -> None:
        _atomic_write_text(self.out_dir / PROGRESS_FILE,
                           json.dumps({"chunks": {str(k): committed[k] for k in sorted(committed)}}) + "\n")

    def commit(self, chunk: int, items_hash: str, records: list[dict], tensors: dict[str, Tensor],
               skipped: list[dict]) -> None:
        from safetensors.torch import save_file

        if tensors:
            final = self.out_dir / _shard_name(chunk)
            tmp = final.with_name(final.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "chunk": str(chunk)})
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        _fsync_append(self.out_dir / MANIFEST_FILE, [json.dumps(r) + "\n" for r in records])
        _fsync_append(self.out_dir / SKIPPED_FILE, [json.dumps(r) + "\n" for r in skipped])
        self.committed[chunk] = {"records": len(records), "skipped": len(skipped), "items": items_hash}
        self._write_progress(self.committed)  # the commit point


def _dataset_meta(settings: dict, extra: dict) -> dict:
    settings_hash = _digest(json.dumps(settings, sort_keys=True))[:16]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **extra, "settings": settings,
            "settings_hash": settings_hash}


def make_dataset(
    samples: Iterable[RelationSample],
    pipe,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] = PUBLISHED_CLASSES,
    steps: int | None = None,
    store_steps: Sequence[int] | None = None,
    size: int | None = None,
    dual: bool = True,
    seed: int = 0,
    val_fraction: float = 0.15,
    shard_size: int = 16,
    dtype: str = "float16",
    min_psnr: float | None = None,
    gamma: float = 1.0,
    eta: float = 1.0,
    num_iter: int = 5,
    map_size: int = 16,
    max_sequence_length: int = 512,
    model_name: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_sample: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Dual-invert every sample with ``pipe`` and write (or resume) a map dataset in ``out_dir``.

    Each sample gives, per stored step, a ``pos`` record (prompt with its true relation) and,
    when ``dual``, a ``neg`` record (a relation drawn from the other classes); both labelled with
    the true class. Unreadable images, phrases missing from the tokens, relations outside
    ``class_names`` and (with ``min_psnr``) poor reconstructions are skipped and logged in
    ``skipped.jsonl``. ``shard_size`` samples make one chunk (one shard, one commit). Maps are
    stored as ``dtype`` ("float16", "bfloat16" or "float32"). Calling again with the same
    arguments resumes; ``limit`` (first N samples) may grow between calls. ``on_sample(i)`` is
    called after sample ``i`` was processed (before its chunk is committed).
    """
    from l2s.capture import AttentionCapture
    from .inversion import (
        DEFAULT_STEPS,
        DEFAULT_STORE_STEPS,
        _check_store_steps,
        _denoiser,
        default_image_size,
        dual_invert,
        map_grid,
        pipeline_family,
    )

    if dtype not in _DTYPES:
        raise L2SError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise L2SError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_size < 1:
        raise L2SError(f"shard_size must be positive, got {shard_size}")
    family = pipeline_family(pipe)
    steps = int(steps or DEFAULT_STEPS[family])
    store = _check_store_steps(DEFAULT_STORE_STEPS[family] if store_steps is None else store_steps, steps)
    size = int(size or default_image_size(pipe))
    class_names = tuple(class_names)

    # Unique samples in the given order (the same relation listed twice would duplicate records).
    unique: dict[str, RelationSample] = {}
    for s in samples:
        unique.setdefault(s.key, s)
    items = list(unique.values())[: limit if limit is not None else None]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    capture = AttentionCapture(_denoiser(pipe))
    try:
        latent_hw = map_grid(pipe, size)
        settings = dict(model_family=family, model=model_name, class_names=list(class_names), steps=steps,
                        store_steps=list(store), size=size, dual=dual, seed=seed, val_fraction=val_fraction,
                        shard_size=shard_size, dtype=dtype, min_psnr=min_psnr, gamma=gamma, eta=eta,
                        num_iter=num_iter, map_size=map_size, max_sequence_length=max_sequence_length)
        extra = dict(channels=capture.channels(), map_size=map_size, orig_map_size=latent_hw[0],
                     class_names=list(class_names), store_steps=list(store), num_steps=steps,
                     model_family=family,
                     layer_layout=[[name, heads, list(hw)] for name, heads, hw in capture.layer_layout(latent_hw)])
        writer = _DatasetWriter(out_dir, _dataset_meta(settings, extra))
        chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
        for chunk, members in enumerate(chunks):
            info = writer.committed.get(chunk)
            if info is not None and info.get("items") != _items_hash(members):
                raise L2SError(f"the samples of chunk {chunk} differ from the run that wrote {out_dir}; "
                               f"pass the same samples in the same order to resume")
        done = sum(len(members) for c, members in enumerate(chunks) if c in writer.committed)
        bar = tqdm(total=len(items), initial=done, disable=not progress, desc="l2s make-data", unit="sample")
        inversion = dict(steps=steps, store_steps=store, size=size, gamma=gamma, eta=eta, num_iter=num_iter,
                         map_size=map_size, max_sequence_length=max_sequence_length, capture=capture)
        with bar:
            for chunk, members in enumerate(chunks):
                if chunk in writer.committed:
                    continue
                records, tensors, skipped = [], {}, []
                for offset, sample in enumerate(members):
                    index = chunk * shard_size + offset
                    try:
                        for record, maps in _sample_records(sample, pipe, class_names, seed, dual, val_fraction,
                                                            min_psnr, dual_invert, inversion):
                            record.update(chunk=chunk, shard=_shard_name(chunk))
                            records.append(record)
                            tensors[record["key"]] = maps.to(_DTYPES[dtype]).contiguous()
                    except _Skip as reason:
                        skipped.append({"key": sample.key, "image_id": sample.image_id, "source": sample.source,
                                        "reason": str(reason), "chunk": chunk})
                        log.warning("skipped %s: %s", sample.key, reason)
                    bar.update()
                    if on_sample is not None:
                        on_sample(index)
                writer.commit(chunk, _items_hash(members), records, tensors, skipped)
    finally:
        capture.remove()
    return dataset_summary(out_dir)


def _items_hash(members: Sequence[RelationSample]) -> str:
    return _digest("\n".join(s.key for s in members))[:16]


def _sample_records(sample: RelationSample, pipe, class_names, seed, dual, val_fraction, min_psnr,
                    dual_invert, inversion: dict) -> list[tuple[dict, Tensor]]:
    """(manifest record, maps (2, C, m, m)) per prompt and stored step of one sample."""
    try:
        relation = canonical_class(sample.relation)
        label = next(n for n in class_names if canonical_class(n) == relation)
    except (L2SError, StopIteration):
        raise _Skip(f"relation {sample.relation!r} is not one of the classes {', '.join(class_names)}") from None
    image = _load_image(sample)
    per_sample_seed = sample_seed(seed, sample)
    try:
        duals = dual_invert(pipe, image, sample.subject, relation, sample.object, seed=per_sample_seed,
                            class_names=class_names, dual=dual, rng=random.Random(per_sample_seed), **inversion)
    except TokenizationError as error:
        raise _Skip(f"tokenization: {error}") from None
    if min_psnr is not None:
        worst = min(d.result.psnr for d in duals)
        if worst < min_psnr:
            raise _Skip(f"reconstruction PSNR {worst:.2f} dB below {min_psnr}")
    split = split_of(sample.image_id, seed, val_fraction)
    item = _digest(sample.key)[:16]
    out = []
    for d in duals:
        for step, maps in sorted(d.result.maps.items()):
            sample_id = f"{item}-{d.prompt.prompt_type}-s{step}"
            out.append(({
                "sample_id": sample_id, "key": sample_id, "prompt": d.prompt.prompt,
                "prompt_type": d.prompt.prompt_type, "relation_word": d.prompt.relation_word,
                "label": label, "label_index": list(class_names).index(label), "timestep": int(step),
                "subject": d.prompt.subject, "object": d.prompt.object, "image_id": sample.image_id,
                "source": sample.source, "sample_key": sample.key, "split": split,
                "psnr": round(float(d.result.psnr), 4),
            }, maps[0]))
    return out


def dataset_summary(out_dir: str | Path) -> DatasetSummary:
    """Counts of a (possibly partial) dataset directory."""
    out_dir = Path(out_dir)
    manifest = _read_jsonl(out_dir / MANIFEST_FILE)
    skipped = _read_jsonl(out_dir / SKIPPED_FILE)
    keys = {r["sample_key"] for r in manifest} | {r["key"] for r in skipped}
    return DatasetSummary(out_dir, len(manifest), len(keys), len(skipped),
                          dict(Counter(r["split"] for r in manifest)))


# --------------------------------------------------------------------------------------------
# Writing maps directly (synthetic data, conversions)
# --------------------------------------------------------------------------------------------


def write_map_dataset(out_dir: str | Path, records: Sequence[dict], maps: Tensor, *, class_names: Sequence[str],
                      channels: int | None = None, map_size: int | None = None,
                      store_steps: Sequence[int] | None = None,
                      num_steps: int | None = None, model_family: str = "custom", shard_size: int = 256,
                      dtype: str = "float32", extra: dict | None = None, orig_map_size: int | None = None,
                      layer_layout: list | None = None) -> Path:
    """Write maps that did not come from :func:`make_dataset` in the same on-disk format.

    ``records``: one dict per map pair with at least ``label`` (a class name), ``timestep`` and
    ``split``; ``sample_id``, ``prompt_type`` ("pos"), ``image_id`` etc. are filled in when absent.
    ``maps``: ``(N, 2, C, m, m)``. Used for synthetic datasets (tests, demonstrations) and
    conversions (:func:`resize_map_dataset`), which pass on the source's ``orig_map_size`` (default:
    the map size) and ``layer_layout``.
    """
    out_dir = Path(out_dir)
    if (out_dir / META_FILE).exists():
        raise L2SError(f"{out_dir} already holds a dataset")
    if len(records) != maps.shape[0]:
        raise ValueError(f"{len(records)} records but {maps.shape[0]} map pairs")
    class_names = list(class_names)
    channels = channels or maps.shape[2]
    map_size = map_size or maps.shape[-1]
    store_steps = sorted({int(r["timestep"]) for r in records}) if store_steps is None else list(store_steps)
    settings = {"model_family": model_family, "class_names": class_names, "synthetic": True, **(extra or {})}
    meta = _dataset_meta(settings, dict(channels=channels, map_size=map_size, orig_map_size=orig_map_size or map_size,
                                        class_names=class_names, store_steps=store_steps,
                                        num_steps=num_steps or (max(store_steps) + 1), model_family=model_family,
                                        **({"layer_layout": layer_layout} if layer_layout is not None else {})))
    writer = _DatasetWriter(out_dir, meta)
    for chunk, start in enumerate(range(0, len(records), shard_size)):
        rows, tensors = [], {}
        for i in range(start, min(start + shard_size, len(records))):
            row = dict(records[i])
            row.setdefault("sample_id", f"synthetic-{i:07d}")
            row.setdefault("key", row["sample_id"])
            row.setdefault("prompt_type", "pos")
            row.setdefault("image_id", row["sample_id"])
            row.setdefault("sample_key", row["sample_id"])
            row["label_index"] = class_names.index(row["label"])
            row.update(chunk=chunk, shard=_shard_name(chunk))
            rows.append(row)
            tensors[row["key"]] = maps[i].to(_DTYPES[dtype]).contiguous()
        writer.commit(chunk, _digest(str(chunk))[:16], rows, tensors, [])
    return out_dir


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def resize_map_dataset(source_dir: str | Path, out_dir: str | Path, map_size: int, shard_size: int = 256) -> Path:
    """A copy of a map dataset with every map brought to ``map_size`` as :func:`make_dataset` would
    have stored it with that ``map_size`` (:func:`l2s.capture.resize_maps_for_classifier`: bilinear,
    renormalised), the same records and splits: to ask what a classifier reads at another grain
    without inverting again. The copy's settings name the source's settings hash."""
    from l2s.capture import resize_maps_for_classifier

    meta = load_dataset_meta(source_dir)
    grid = int(meta["map_size"])
    if map_size == grid:
        raise L2SError(f"{source_dir} already has {grid}x{grid} maps")
    source = AttentionMapDataset(source_dir, split=None)
    if not len(source):
        raise L2SError(f"{source_dir} holds no committed records to resize")
    maps = torch.stack([resize_maps_for_classifier([(source[i][0], (grid, grid))], map_size)
                        for i in range(len(source))])
    written = ("chunk", "shard", "label_index")  # write_map_dataset assigns these anew
    records = [{k: v for k, v in row.items() if k not in written} for row in source.records]
    return write_map_dataset(out_dir, records, maps, class_names=meta["class_names"], channels=meta["channels"],
                             map_size=map_size, store_steps=meta["store_steps"], num_steps=meta["num_steps"],
                             model_family=meta["model_family"], shard_size=shard_size,
                             dtype=meta["settings"].get("dtype", "float32"),
                             extra={"synthetic": bool(meta["settings"].get("synthetic", False)),
                                    "resized_from": meta["settings_hash"], "source_map_size": grid},
                             orig_map_size=meta.get("orig_map_size"), layer_layout=meta.get("layer_layout"))


def load_dataset_meta(dataset_dir: str | Path) -> dict:
    """The ``dataset.json`` of a map dataset (raises ``L2SError`` when absent or foreign)."""
    path = Path(dataset_dir) / META_FILE
    if not path.is_file():
        raise L2SError(f"{dataset_dir} is not an l2s map dataset ({META_FILE} missing)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise L2SError(f"cannot read {path}: {error}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise L2SError(f"{path} is not a version-{FORMAT_VERSION} l2s map dataset")
    return meta


class AttentionMapDataset(torch.utils.data.Dataset):
    """A split of a map dataset: items are ``(maps (2, C, m, m) float32, step index, label index)``.

    Maps are read lazily from the memory-mapped shards (safetensors), so the dataset never holds
    more than the requested item in memory; shard handles are reopened in each DataLoader worker.

    Args:
        dataset_dir: directory written by :func:`make_dataset` / :func:`write_map_dataset`.
        split: "train", "val", or None for all records.
        timesteps: keep only these step indices (the classifier's trained steps).
        prompt_types: keep only these prompt types (e.g. ``("pos",)`` for the leakage ablation).
        class_names: label indices refer to this order (default: the dataset's own).
    """

    def __init__(self, dataset_dir: str | Path, split: str | None = "train", timesteps: Sequence[int] | None = None,
                 prompt_types: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.meta = load_dataset_meta(self.dataset_dir)
        self.class_names = tuple(class_names or self.meta["class_names"])
        committed = json.loads((self.dataset_dir / PROGRESS_FILE).read_text())["chunks"] \
            if (self.dataset_dir / PROGRESS_FILE).exists() else {}
        rows = [r for r in _read_jsonl(self.dataset_dir / MANIFEST_FILE) if str(r.get("chunk")) in committed]
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if timesteps is not None:
            wanted = {int(t) for t in timesteps}
            rows = [r for r in rows if int(r["timestep"]) in wanted]
        if prompt_types is not None:
            rows = [r for r in rows if r["prompt_type"] in set(prompt_types)]
        unknown = sorted({r["label"] for r in rows} - set(self.class_names))
        if unknown:
            raise L2SError(f"dataset labels {unknown} are not classes of the classifier "
                           f"({', '.join(self.class_names)})")
        self.records = rows
        self._labels = [self.class_names.index(r["label"]) for r in rows]
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._handles:
            self._handles[name] = safe_open(str(self.dataset_dir / name), framework="pt")
        return self._handles[name]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        row = self.records[index]
        maps = self._shard(row["shard"]).get_tensor(row["key"]).float()
        return maps, int(row["timestep"]), self._labels[index]

    def labels(self) -> list[int]:
        return list(self._labels)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles do not cross process boundaries
        return state


# --------------------------------------------------------------------------------------------
# CLI: l2s make-data
# --------------------------------------------------------------------------------------------


def _load_pipe(model: str, device: str, torch_dtype: str):
    import l2s.demo as testing

    tiny = {"tiny": testing.tiny_flux_pipeline, "tiny-flux": testing.tiny_flux_pipeline,
            "tiny-dev": lambda: testing.tiny_flux_pipeline(guidance_embeds=True), "tiny-sd": testing.tiny_sd_pipeline}
    if model in tiny:
        return tiny[model]().to(device)
    from l2s.pipelines import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(model, torch_dtype=_DTYPES[torch_dtype])
    return pipe.to(device)


def build_make_data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="l2s make-data",
        description="Build the relation classifier's training data: invert labelled images twice (with the "
                    "true relation word and with a wrong one, both labelled with the true relation) and store "
                    "the attention maps recorded while reconstructing them. Resumable: rerun the same command "
                    "after an interruption.")
    p.add_argument("--model", default="tiny",
                   help="'tiny' / 'tiny-dev' / 'tiny-sd' (random tiny pipelines, offline) or a local diffusers "
                        "FLUX or Stable Diffusion directory")
    p.add_argument("--source", choices=("gqa", "coco", "pairs"), required=True,
                   help="gqa: GQA scene graphs; coco: COCO instances JSON; pairs: JSONL of {image, prompt}")
    p.add_argument("--annotations", nargs="+", required=True,
                   help="scene-graph JSON file(s) (gqa; several are merged), instances JSON (coco) or JSONL (pairs)")
    p.add_argument("--images", help="image directory (gqa: <image_id>.jpg; coco: file_name; pairs: relative paths)")
    p.add_argument("--out", required=True, help="output dataset directory (resumed if it exists)")
    p.add_argument("--classes", choices=("published", "diagonal"), default="published",
                   help="class set: published 5 classes (above, below, is, to the left of, to the right of) "
                        "or the diagonal classifier's")
    p.add_argument("--steps", type=int, help="sampling steps (default: 4 schnell, 50 dev/SD)")
    p.add_argument("--store-steps", type=int, nargs="+",
                   help="step indices whose maps are stored (default: schnell 1 3; dev/SD 5 10 15 20 25 49)")
    p.add_argument("--size", type=int, help="square image side (default: 256 schnell, 512 dev/SD)")
    p.add_argument("--no-dual", action="store_true",
                   help="invert only with the correct relation word (leakage ablation; not recommended)")
    p.add_argument("--seed", type=int, default=0, help="seeds splits, wrong-relation draws and inversion noise")
    p.add_argument("--limit", type=int, help="use only the first N samples (may grow between resumed runs)")
    p.add_argument("--max-per-class", type=int, help="balance: at most N samples per relation (seeded)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of source images in the val split")
    p.add_argument("--shard-size", type=int, default=16, help="samples per shard / commit")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="float16", help="storage dtype of the maps")
    p.add_argument("--min-psnr", type=float,
                   help="drop samples whose reconstruction PSNR is lower (published: 20 FLUX, 19.5 SD)")
    p.add_argument("--gamma", type=float, default=1.0, help="RF-Inversion inversion controller strength (FLUX)")
    p.add_argument("--eta", type=float, default=1.0, help="RF-Inversion reconstruction controller strength (FLUX)")
    p.add_argument("--max-iou", type=float, default=0.3, help="coco: discard box pairs overlapping more than this")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--torch-dtype", choices=tuple(_DTYPES), default="float32",
                   help="weights dtype for --model PATH (FLUX on GPU: bfloat16, as published)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def make_data_main(argv: Sequence[str] | None = None) -> int:
    """``l2s make-data``: returns the exit code (2 with one error line for bad input)."""
    args = build_make_data_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="l2s: %(message)s")
    try:
        class_names = PUBLISHED_CLASSES if args.classes == "published" else DIAGONAL_CLASSES
        images = args.images or "."
        if args.source == "gqa":
            samples = gqa_samples(args.annotations, images,
                                  relations=DIAGONAL if args.classes == "diagonal" else DIRECTIONAL)
        elif args.source == "coco":
            samples = []
            for path in args.annotations:
                samples += coco_samples(path, images, diagonal=args.classes == "diagonal", max_iou=args.max_iou)
        else:
            samples = []
            for path in args.annotations:
                samples += prompt_pair_samples(path, args.images)
        if args.max_per_class:
            samples = balance_samples(samples, args.max_per_class, args.seed)
        if not samples:
            raise L2SError("the annotations gave no usable labelled relation")
        pipe = _load_pipe(args.model, args.device, args.torch_dtype)
        summary = make_dataset(
            samples, pipe, args.out, class_names=class_names, steps=args.steps, store_steps=args.store_steps,
            size=args.size, dual=not args.no_dual, seed=args.seed, val_fraction=args.val_fraction,
            shard_size=args.shard_size, dtype=args.dtype, min_psnr=args.min_psnr, gamma=args.gamma, eta=args.eta,
            model_name=args.model, limit=args.limit, progress=not args.quiet)
    except L2SError as error:
        print(f"l2s: error: {error}", file=sys.stderr)
        return 2
    print(f"l2s: {summary.records} records from {summary.samples_done} samples "
          f"({summary.skipped} skipped; {summary.split_records}) in {summary.out_dir}", file=sys.stderr)
    return 0
