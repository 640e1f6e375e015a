"""The on-disk format of a map dataset, and how it is read back and checked.

A dataset directory::

    out_dir/
      dataset.json        settings, channels, class names (written once; checked on resume)
      manifest.jsonl      one line per (prompt, stored step): ids, prompt, label, split, shard, key
      skipped.jsonl       samples that produced nothing, with the reason
      skipped_pairs.jsonl ``--source pairs``: the pairs that gave no sample, with the reason
                          (the last run's annotations; not part of the dataset's commits)
      progress.json       the commit record: per complete chunk its line counts and its shard's
                          size and SHA-256
      preview.png         the first few samples' images and attention maps (drawn from the
                          committed shards when a run ends: :mod:`.preview`)
      shards/shard-00000.safetensors   maps (2, C, m, m) of one chunk of samples, key = sample id

:class:`~l2s.training.writer.DatasetWriter` commits chunk by chunk. Readers trust only committed
chunks, and only when their lines and shard match the commit record: a damaged line or shard is
an error naming the file (and line), and rerunning the ``make-data`` command redoes that chunk.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from l2s.errors import L2SError
from l2s.files import DamagedFileError, file_sha256, read_jsonl_lines, read_state_json
from .sources import digest

FORMAT = "l2s-attention-maps"
FORMAT_VERSION = 1
META_FILE, MANIFEST_FILE = "dataset.json", "manifest.jsonl"
SKIPPED_FILE, PROGRESS_FILE = "skipped.jsonl", "progress.json"
SKIPPED_PAIRS_FILE = "skipped_pairs.jsonl"
PREVIEW_FILE = "preview.png"
SHARD_DIR = "shards"
# Every file of a dataset folder (what a run that made or resumed it says it wrote).
DATASET_FILES = (META_FILE, MANIFEST_FILE, SKIPPED_FILE, SKIPPED_PAIRS_FILE, PROGRESS_FILE, PREVIEW_FILE, SHARD_DIR)
SPLITS = ("train", "val")
# Storage dtypes of the maps (and weight dtypes of the pipelines that make them).
MAP_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def shard_name(chunk: int) -> str:
    """The shard file of a chunk, relative to the dataset directory."""
    return f"{SHARD_DIR}/shard-{chunk:05d}.safetensors"


def dataset_meta(settings: dict, extra: dict) -> dict:
    """The ``dataset.json`` content: format, ``extra`` fields, the settings and their hash."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **extra, "settings": settings,
            "settings_hash": settings_hash(settings)}


def settings_hash(settings: dict) -> str:
    """What ``dataset.json`` and ``progress.json`` record of a dataset's settings (a resume must match it)."""
    return digest(json.dumps(settings, sort_keys=True))[:16]



# Fields every manifest line has (readers rely on them).
ROW_FIELDS = ("key", "shard", "split", "timestep", "label", "prompt_type")
# How to recover from damage, said in every error about a dataset.
REDO = "rerun the 'l2s make-data' command that wrote it (it redoes damaged chunks), or start over with --restart"


def load_dataset_meta(dataset_dir: str | Path) -> dict:
    """The ``dataset.json`` of a map dataset (raises ``L2SError`` when absent, damaged or foreign)."""
    path = Path(dataset_dir) / META_FILE
    if not path.is_file():
        folder = Path(dataset_dir)
        why = "no such folder" if not folder.exists() else "a file, not a folder" if not folder.is_dir() \
            else f"{META_FILE} missing"
        raise L2SError(f"{dataset_dir} is not an l2s map dataset ({why}; 'l2s make-data' writes one)")
    meta = read_state_json(path, fix=f"delete it and {REDO}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise L2SError(f"{path} is not a version-{FORMAT_VERSION} l2s map dataset")
    return meta


def shard_size_to_resume(dataset_dir: str | Path, default: int, restart: bool = False) -> int:
    """The shard size the dataset in ``dataset_dir`` was made with (a resumed run must keep it), or
    ``default`` where there is none to resume (``restart``, a new folder, or one that holds no
    readable dataset)."""
    if restart:
        return default
    try:
        settings = load_dataset_meta(dataset_dir).get("settings")
    except L2SError:   # nothing to resume here: the writer says what is wrong, if anything
        return default
    recorded = settings.get("shard_size") if isinstance(settings, dict) else None
    return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1 else default


def read_progress(dataset_dir: Path) -> dict:
    """``progress.json``: ``{"settings_hash": ..., "chunks": {chunk: record}}`` (empty when absent)."""
    path = dataset_dir / PROGRESS_FILE
    fix = "without it no chunk can be trusted: rerun the 'l2s make-data' command with --restart to start over"
    progress = read_state_json(path, fix=fix)
    if progress is None:
        return {"chunks": {}}
    chunks = progress.get("chunks") if isinstance(progress, dict) else None
    if not isinstance(chunks, dict) or not all(
            isinstance(info, dict) and isinstance(info.get("records"), int) and isinstance(info.get("skipped"), int)
            and str(key).isdigit() for key, info in chunks.items()):
        raise DamagedFileError(f"{path} is damaged (not a commit record); {fix}")
    return {**progress, "chunks": {int(key): info for key, info in chunks.items()}}


def shard_problem(path: Path, info: dict, full: bool) -> str | None:
    """Why the committed shard ``path`` cannot be trusted, or None. Checks its size against the
    commit record (or, for records without one, its safetensors header against its size) and,
    when ``full``, its SHA-256."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if "bytes" in info:
        if size != info["bytes"]:
            return f"{size} bytes, {info['bytes']} committed"
    else:
        problem = _header_problem(path, size)
        if problem:
            return problem
    if full and "sha256" in info and file_sha256(path) != info["sha256"]:
        return "checksum differs from the committed one"
    return None


def _header_problem(path: Path, size: int) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor data it lists."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or not 0 < length <= size - 8:
                return "truncated header"
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        return f"unreadable header ({type(error).__name__})"
    if 8 + length + end != size:
        return f"{size} bytes, its header describes {8 + length + end}"
    return None


def committed_rows(dataset_dir: str | Path, full_check: bool = False, progress: bool = False) -> list[dict]:
    """The manifest rows of every committed chunk, after checking that nothing of them is damaged:
    every line parses (a torn last line of an unfinished commit is left out), each chunk has as
    many lines as committed, keys are unique and each shard passes :func:`shard_problem`
    (``full_check``: its checksum too, with a bar when ``progress``). Raises
    :class:`~l2s.files.DamagedFileError` naming the file, line or shard."""
    dataset_dir = Path(dataset_dir)
    chunks = read_progress(dataset_dir)["chunks"]
    manifest = dataset_dir / MANIFEST_FILE
    rows = [(n, r) for n, r in read_jsonl_lines(manifest, fix=REDO) if r.get("chunk") in chunks]
    rows.sort(key=lambda numbered: numbered[1]["chunk"])  # a chunk redone on a rerun was appended last
    counts = Counter(r["chunk"] for _, r in rows)
    seen: dict[str, int] = {}
    for number, row in rows:
        key = row.get("key")
        missing = [field for field in ROW_FIELDS if field not in row]
        if missing or not isinstance(key, str) or not isinstance(row["shard"], str):
            raise DamagedFileError(f"{manifest} line {number} is not a record (missing or bad "
                                   f"{', '.join(missing) or 'key or shard'}); {REDO}")
        if key in seen:
            raise DamagedFileError(f"{manifest} line {number} repeats the record of line {seen[key]} "
                                   f"({key}); {REDO}")
        seen[key] = number
    with checksum_bar(chunks, progress and full_check) as bar:
        for chunk, info in sorted(chunks.items()):
            if counts[chunk] != info["records"]:
                raise DamagedFileError(f"{manifest} has {counts[chunk]} lines of chunk {chunk}, "
                                       f"{info['records']} were committed; {REDO}")
            problem = shard_problem(dataset_dir / shard_name(chunk), info, full_check) if info["records"] else None
            if problem:
                raise DamagedFileError(f"{dataset_dir / shard_name(chunk)} is damaged ({problem}); {REDO}")
            bar.update(info.get("bytes", 0))
    return [r for _, r in rows]


def checksum_bar(chunks: dict[int, dict], progress: bool) -> tqdm:
    """A bar of the committed shards' bytes while their checksums are read: on a dataset of many GB
    that takes minutes before the first sample or epoch. It shows only once it has run 2 seconds."""
    total = sum(info.get("bytes", 0) for info in chunks.values())
    return tqdm(total=total, disable=not progress, desc="l2s checking shards", unit="B", unit_scale=True,
                delay=2, leave=False)


def verify_dataset(dataset_dir: str | Path, progress: bool = False) -> int:
    """Check every committed line and shard of a dataset, checksums included; the record count.
    ``progress``: a bar of the bytes checked (:func:`checksum_bar`)."""
    load_dataset_meta(dataset_dir)
    return len(committed_rows(dataset_dir, full_check=True, progress=progress))
