"""One chunk of a dataset made: each sample's image read, inverted twice and turned into records
(or skipped with its reason), and the chunk's shard written."""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from l2s.errors import L2SError, TokenizationError
from l2s.relations import canonical_class
from .chunks import file_state, items_hash
from .inversion import dual_invert
from .sources import RelationSample, digest, sample_seed, split_of
from .store import MAP_DTYPES, SKIPPED_FILE, shard_name
from .writer import write_shard

log = logging.getLogger(__name__)


class Skip(Exception):
    """A sample that produces no records; the message is the reason logged in skipped.jsonl.
    ``file_state``: for an image file at fault, its state before it was read (a rerun tries the
    sample again once that has changed); None otherwise."""

    def __init__(self, reason: str, file_state: list[int] | None | bool = False) -> None:
        super().__init__(reason)
        self.file_state = file_state   # False: not about a file


def load_image(sample: RelationSample) -> Image.Image:
    if isinstance(sample.image, Image.Image):
        return sample.image
    # Read before the open: a file still being copied in is retried once it is whole.
    state = file_state(sample.image) if isinstance(sample.image, (str, os.PathLike)) else False
    try:
        with Image.open(sample.image) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise Skip(f"image not found: {sample.image}", state) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise Skip(f"unreadable image {sample.image}: {type(error).__name__}: {error}", state) from None


class SkipLog:
    """Logs the first few skips, then once that the others are only in their ``record`` file (the
    summary line counts them all): images missing from a 100k-sample run, or a captions file read
    as pairs, would bury every other line. ``what``: what is skipped, for that line."""

    shown = 5

    def __init__(self, what: str = "samples") -> None:
        self.count, self.what = 0, what

    def __call__(self, key: str, reason: Skip | str, record: Path) -> None:
        self.count += 1
        if self.count <= self.shown:
            log.warning("skipped %s: %s", key, reason)
        elif self.count == self.shown + 1:
            log.warning("more %s skipped: not listed here, each with its reason in %s; the summary line "
                        "counts them", self.what, record)


@dataclass
class Job:
    """What every sample of a :func:`make_dataset` call shares."""

    pipe: Any
    class_names: tuple[str, ...]
    seed: int
    dual: bool
    val_fraction: float
    min_psnr: float | None
    dtype: str
    inversion: dict[str, Any]  # keyword arguments of dual_invert
    out_dir: Path
    shard_size: int
    on_sample: Callable[[int], None] | None = None
    skip_log: SkipLog = field(default_factory=SkipLog)


def invert_chunk(job: Job, chunk: int, members: list[RelationSample], bar) -> tuple:
    """Invert the samples of one chunk and write its shard; what its commit needs:
    ``(chunk, shard info, records, skipped)`` (why each skipped sample was skipped)."""
    records, tensors, skipped = [], {}, []
    for offset, sample in enumerate(members):
        try:
            for record, maps in sample_records(sample, job):
                record.update(chunk=chunk, shard=shard_name(chunk))
                records.append(record)
                tensors[record["key"]] = maps.to(MAP_DTYPES[job.dtype]).contiguous()
        except Skip as reason:
            skipped.append({"key": sample.key, "image_id": sample.image_id, "source": sample.source,
                            "reason": str(reason), "chunk": chunk,
                            **({} if reason.file_state is False else {"file_state": reason.file_state})})
            job.skip_log(sample.key, reason, job.out_dir / SKIPPED_FILE)
        bar.update()
        if job.on_sample is not None:
            job.on_sample(chunk * job.shard_size + offset)
    return chunk, write_shard(job.out_dir, chunk, items_hash(members), tensors), records, skipped


def sample_records(sample: RelationSample, job: Job) -> list[tuple[dict, Tensor]]:
    """(manifest record, maps (2, C, m, m)) per prompt and stored step of one sample."""
    class_names = job.class_names
    try:
        relation = canonical_class(sample.relation)
        label = next(n for n in class_names if canonical_class(n) == relation)
    except (L2SError, StopIteration):
        raise Skip(f"relation {sample.relation!r} is not one of the classes {', '.join(class_names)}") from None
    image = load_image(sample)
    per_sample_seed = sample_seed(job.seed, sample)
    try:
        duals = dual_invert(job.pipe, image, sample.subject, relation, sample.object, seed=per_sample_seed,
                            class_names=class_names, dual=job.dual, rng=random.Random(per_sample_seed),
                            **job.inversion)
    except TokenizationError as error:
        raise Skip(f"tokenization: {error}") from None
    if job.min_psnr is not None:
        worst = min(d.result.psnr for d in duals)
        if worst < job.min_psnr:
            raise Skip(f"reconstruction PSNR {worst:.2f} dB below {job.min_psnr}")
    split = split_of(sample.image_id, job.seed, job.val_fraction)
    item = digest(sample.key)[:16]
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
