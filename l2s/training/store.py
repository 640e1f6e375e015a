"""The on-disk format of a map dataset, and the writer that commits it chunk by chunk.

A dataset directory::

    out_dir/
      dataset.json        settings, channels, class names (written once; checked on resume)
      manifest.jsonl      one line per (prompt, stored step): ids, prompt, label, split, shard, key
      skipped.jsonl       samples that produced nothing, with the reason
      progress.json       the commit record (which chunks are complete)
      shards/shard-00000.safetensors   maps (2, C, m, m) of one chunk of samples, key = sample id

A chunk is committed by (1) writing its shard to a temporary file and renaming it, (2) appending
its manifest / skipped lines, (3) atomically rewriting ``progress.json``. A restarted writer drops
everything not covered by a commit (stray shards, torn or uncommitted manifest lines, lines whose
shard vanished), so exactly those chunks are redone.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from l2s.errors import L2SError
from .sources import digest

log = logging.getLogger(__name__)

FORMAT = "l2s-attention-maps"
FORMAT_VERSION = 1
META_FILE, MANIFEST_FILE = "dataset.json", "manifest.jsonl"
SKIPPED_FILE, PROGRESS_FILE = "skipped.jsonl", "progress.json"
SHARD_DIR = "shards"
SPLITS = ("train", "val")
# Storage dtypes of the maps (and weight dtypes of the pipelines that make them).
MAP_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def fsync_append(path: Path, lines: list[str]) -> None:
    """Append ``lines`` in one write and sync them to disk."""
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))  # one write: a kill leaves whole lines or a torn last line
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
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


def shard_name(chunk: int) -> str:
    """The shard file of a chunk, relative to the dataset directory."""
    return f"{SHARD_DIR}/shard-{chunk:05d}.safetensors"


def dataset_meta(settings: dict, extra: dict) -> dict:
    """The ``dataset.json`` content: format, ``extra`` fields, the settings and their hash."""
    settings_hash = digest(json.dumps(settings, sort_keys=True))[:16]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **extra, "settings": settings,
            "settings_hash": settings_hash}


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


class DatasetWriter:
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
            atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        self.meta = meta
        self.committed = self._recover()

    def _recover(self) -> dict[int, dict]:
        """Drop everything not covered by progress.json; return the committed chunks."""
        progress_path = self.out_dir / PROGRESS_FILE
        committed = {int(k): v for k, v in json.loads(progress_path.read_text())["chunks"].items()} \
            if progress_path.exists() else {}
        manifest = [r for r in read_jsonl(self.out_dir / MANIFEST_FILE) if r.get("chunk") in committed]
        skipped = [r for r in read_jsonl(self.out_dir / SKIPPED_FILE) if r.get("chunk") in committed]
        # A committed chunk is intact only if its shard exists and all its lines are there.
        have = Counter(r["chunk"] for r in manifest if (self.out_dir / r["shard"]).exists())
        have_skipped = Counter(r["chunk"] for r in skipped)
        for chunk, info in list(committed.items()):
            if have[chunk] != info["records"] or have_skipped[chunk] != info["skipped"]:
                log.warning("chunk %d is incomplete on disk (missing shard or lines): redoing it", chunk)
                del committed[chunk]
        manifest = [r for r in manifest if r["chunk"] in committed]
        skipped = [r for r in skipped if r["chunk"] in committed]
        atomic_write_text(self.out_dir / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for r in manifest))
        atomic_write_text(self.out_dir / SKIPPED_FILE, "".join(json.dumps(r) + "\n" for r in skipped))
        keep = {shard_name(c) for c in committed}
        for path in (self.out_dir / SHARD_DIR).iterdir():
            if f"{SHARD_DIR}/{path.name}" not in keep:
                path.unlink()  # uncommitted shard or temporary file of a killed write
        self._write_progress(committed)
        return committed

    def _write_progress(self, committed: dict[int, dict]) -> None:
        atomic_write_text(self.out_dir / PROGRESS_FILE,
                          json.dumps({"chunks": {str(k): committed[k] for k in sorted(committed)}}) + "\n")

    def commit(self, chunk: int, items_hash: str, records: list[dict], tensors: dict[str, Tensor],
               skipped: list[dict]) -> None:
        from safetensors.torch import save_file

        if tensors:
            final = self.out_dir / shard_name(chunk)
            tmp = final.with_name(final.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "chunk": str(chunk)})
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        fsync_append(self.out_dir / MANIFEST_FILE, [json.dumps(r) + "\n" for r in records])
        fsync_append(self.out_dir / SKIPPED_FILE, [json.dumps(r) + "\n" for r in skipped])
        self.committed[chunk] = {"records": len(records), "skipped": len(skipped), "items": items_hash}
        self._write_progress(self.committed)  # the commit point

