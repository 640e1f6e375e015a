"""Write a map dataset (format: :mod:`.store`) chunk by chunk, and recover after a crash or a kill.

A chunk is committed by (1) writing its shard to a temporary file and renaming it, (2) appending
its manifest / skipped lines, (3) atomically rewriting ``progress.json`` with the lines' counts
and the shard's size and SHA-256. A restarted writer checks every committed chunk against that
record and drops everything else (stray shards, torn or uncommitted lines, damaged shards), so
exactly the missing or damaged chunks are redone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

from torch import Tensor

from l2s.errors import L2SError
from l2s.files import (
    DamagedFileError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_append,
    read_jsonl_lines,
    remove_outputs,
    read_state_json,
    unrecorded_later,
)
from .store import (
    FORMAT,
    MANIFEST_FILE,
    META_FILE,
    PREVIEW_FILE,
    PROGRESS_FILE,
    SHARD_DIR,
    SKIPPED_FILE,
    checksum_bar,
    read_progress,
    settings_hash,
    shard_name,
    shard_problem,
)

log = logging.getLogger(__name__)
# Settings recorded since a release: a dataset made without one resumes as it was made.
RECORDED_LATER = ("weights_dtype",)


def clear_dataset(out_dir: Path) -> None:
    """Remove a dataset's files from ``out_dir`` (``--restart``); anything else there is kept."""
    remove_outputs(out_dir, [META_FILE, MANIFEST_FILE, SKIPPED_FILE, PROGRESS_FILE, PREVIEW_FILE, SHARD_DIR],
                   "starting the dataset over")


def remove_empty_dataset(out_dir: Path) -> list[str]:
    """Remove the files of a dataset that holds no record (every sample skipped), quietly: nothing
    in it could be used or resumed. Returns the skip reasons it recorded."""
    reasons = [str(row.get("reason", "")) for row in salvage_jsonl(out_dir / SKIPPED_FILE)]
    if salvage_jsonl(out_dir / MANIFEST_FILE):
        return reasons
    for name in (META_FILE, MANIFEST_FILE, SKIPPED_FILE, PROGRESS_FILE):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / SHARD_DIR, ignore_errors=True)
    return reasons


def salvage_jsonl(path: Path) -> list[dict]:
    """The lines of ``path`` that parse; a damaged line is logged (its chunk gets redone), a torn
    last line (a kill mid-append) is dropped quietly."""
    def redone(number: int) -> None:
        log.warning("%s line %d is damaged: its chunk is redone", path, number)

    return [row for _, row in read_jsonl_lines(path, fix="", on_damaged=redone)]


def as_made_before(meta: dict, earlier) -> dict:
    """``meta`` without the settings :data:`RECORDED_LATER` that a dataset's ``earlier`` settings lack
    (its hash again), so that a dataset made before they were recorded resumes."""
    if not isinstance(earlier, dict):
        return meta
    settings = unrecorded_later(earlier, meta["settings"], RECORDED_LATER)
    if settings == meta["settings"]:
        return meta
    return {**meta, "settings": settings, "settings_hash": settings_hash(settings)}


class DatasetWriter:
    """Commits chunks of records (shard + manifest lines + skipped lines) and recovers on restart.

    ``restart``: remove a previous dataset in ``out_dir`` first; ``progress``: a bar while the
    committed shards' checksums are read. The caller holds ``out_dir``'s lock
    (:func:`l2s.files.output_lock`): one writer at a time.
    """

    def __init__(self, out_dir: Path, meta: dict, restart: bool = False, progress: bool = False) -> None:
        self.out_dir = out_dir
        if restart:
            clear_dataset(out_dir)
        (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self.meta = self._claim(meta)
        self.committed = self._recover(progress)

    def _claim(self, meta: dict) -> dict:
        """Write ``dataset.json``, or check that the dataset there was made with these settings; the
        meta the dataset is written under (:func:`as_made_before` of an earlier one)."""
        meta_path = self.out_dir / META_FILE
        existing = read_state_json(meta_path, fix="delete it and rerun the same command (it is written again), "
                                                  "or start over with --restart")
        if existing is not None and not isinstance(existing, dict):
            raise DamagedFileError(f"{meta_path} is damaged (not a JSON object); delete it and rerun the same "
                                   "command, or start over with --restart")
        if existing is not None:
            meta = as_made_before(meta, existing.get("settings"))
        if existing is not None and existing.get("settings_hash") != meta["settings_hash"]:
            before = existing.get("settings", {})
            differing = [f"{k}: {before.get(k)!r} -> {meta['settings'][k]!r}"   # dtype: the maps' (--map-dtype)
                         for k in sorted(meta["settings"]) if before.get(k) != meta["settings"][k]]
            raise L2SError(f"{self.out_dir} holds a dataset made with other settings "
                           f"({', '.join(differing) or 'format'}); use a new output directory or the same "
                           f"settings to resume (or start over with --restart)")
        recorded = read_progress(self.out_dir).get("settings_hash")
        if recorded is not None and recorded != meta["settings_hash"]:
            raise L2SError(f"{self.out_dir / PROGRESS_FILE} records chunks made with other settings; use the "
                           "settings that made them to resume, or start over with --restart")
        if existing is None:
            atomic_write_json(meta_path, meta)
        return meta

    def _recover(self, progress: bool) -> dict[int, dict]:
        """Drop everything not covered by progress.json, or damaged; return the intact chunks."""
        committed = read_progress(self.out_dir)["chunks"]
        manifest = [r for r in salvage_jsonl(self.out_dir / MANIFEST_FILE) if r.get("chunk") in committed]
        skipped = [r for r in salvage_jsonl(self.out_dir / SKIPPED_FILE) if r.get("chunk") in committed]
        have, have_skipped = Counter(r["chunk"] for r in manifest), Counter(r["chunk"] for r in skipped)
        with checksum_bar(committed, progress) as bar:
            for chunk, info in sorted(committed.items()):
                if have[chunk] != info["records"] or have_skipped[chunk] != info["skipped"]:
                    problem = f"{have[chunk]} of {info['records']} manifest lines, {have_skipped[chunk]} of " \
                              f"{info['skipped']} skipped lines"
                else:
                    problem = (shard_problem(self.out_dir / shard_name(chunk), info, full=True)
                               if info["records"] else None)
                if problem:
                    log.warning("chunk %d cannot be trusted (%s): redoing it", chunk, problem)
                    del committed[chunk]
                bar.update(info.get("bytes", 0))
        self._keep(committed, manifest, skipped)
        return committed

    def redo(self, chunks: list[int]) -> None:
        """Uncommit ``chunks`` (their lines and shards go), so that this run makes them again."""
        if not chunks:
            return
        for chunk in chunks:
            self.committed.pop(chunk, None)
        self._keep(self.committed, salvage_jsonl(self.out_dir / MANIFEST_FILE),
                   salvage_jsonl(self.out_dir / SKIPPED_FILE))

    def _keep(self, committed: dict[int, dict], manifest: list[dict], skipped: list[dict]) -> None:
        """Rewrite the progress, lines and shards of ``out_dir`` to hold only ``committed`` (the
        progress first: a kill in between leaves lines no commit covers, which are dropped)."""
        self._write_progress(committed)
        manifest = [r for r in manifest if r["chunk"] in committed]
        skipped = [r for r in skipped if r["chunk"] in committed]
        atomic_write_text(self.out_dir / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for r in manifest))
        atomic_write_text(self.out_dir / SKIPPED_FILE, "".join(json.dumps(r) + "\n" for r in skipped))
        keep = {shard_name(c) for c in committed}
        for path in (self.out_dir / SHARD_DIR).iterdir():
            if f"{SHARD_DIR}/{path.name}" not in keep:
                path.unlink()  # uncommitted or damaged shard, or the temporary file of a killed write

    def _write_progress(self, committed: dict[int, dict]) -> None:
        atomic_write_json(self.out_dir / PROGRESS_FILE,
                          {"settings_hash": self.meta["settings_hash"],
                           "chunks": {str(k): committed[k] for k in sorted(committed)}}, indent=None)

    def commit(self, chunk: int, items_hash: str, records: list[dict], tensors: dict[str, Tensor],
               skipped: list[dict]) -> None:
        """Write one chunk: shard, then lines, then the commit record (the commit point)."""
        self.record(chunk, write_shard(self.out_dir, chunk, items_hash, tensors), records, skipped)

    def record(self, chunk: int, info: dict, records: list[dict], skipped: list[dict]) -> None:
        """Commit a chunk whose shard :func:`write_shard` wrote (``info`` is what it returned):
        its lines, then the commit record."""
        info = {"records": len(records), "skipped": len(skipped), **info}
        fsync_append(self.out_dir / MANIFEST_FILE, [json.dumps(r) + "\n" for r in records])
        fsync_append(self.out_dir / SKIPPED_FILE, [json.dumps(r) + "\n" for r in skipped])
        self.committed[chunk] = info
        self._write_progress(self.committed)


def write_shard(out_dir: Path, chunk: int, items_hash: str, tensors: dict[str, Tensor]) -> dict:
    """Write a chunk's shard (none when it has no maps), before its commit; any process of a
    spread run may write its own chunks' shards. Returns the chunk's commit fields so far."""
    from safetensors.torch import save

    info = {"items": items_hash}
    if tensors:
        # One metadata key: safetensors writes several in a random order, and a redone chunk
        # must be the same bytes as the first time.
        data = save(tensors, metadata={"format": FORMAT})
        atomic_write_bytes(out_dir / shard_name(chunk), data)
        info.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    return info
