"""Preference pairs on disk: sharded, each shard committed atomically, read back in one call.

A pair folder holds::

    manifest.json                  what made the pairs (settings: checked when a run resumes)
    progress.json                  shards done and pair counts (informative; the shards are the truth)
    shards/00000.safetensors       ``images``: (N, H, W, 3) uint8, every image the shard's pairs use
    shards/00000.jsonl             one pair a line: ``prompt``, ``winner``, ``loser`` (row indices
                                   into the shard's images), ``split``, ``flips`` and anything else;
                                   ``kind: "drop"`` marks a loser that lacks one of the prompt's
                                   objects (``perturbed`` is then what it was drawn from),
                                   ``kind: "duplicate"`` one that shows an object twice

A shard counts as done once its ``.jsonl`` exists: the images are written first, the pair lines
last, each atomically, so a run killed at any moment leaves whole shards and nothing else.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from l2s.errors import L2SError
from l2s.files import (DamagedFileError, atomic_write_bytes, atomic_write_json, atomic_write_text, described_changes,
                       prepare_output_dir, read_state_json, remove_outputs)

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SHARDS = "shards"
FORMAT = "l2s-preference-pairs/1"
SPLITS = ("train", "heldout")
DROP = "drop"
DUPLICATE = "duplicate"
KINDS = (DROP, DUPLICATE)   # losers that show no prompt of the pair: never mirrored


@dataclass
class PairSet:
    """Pairs in memory: ``images`` (N, H, W, 3) uint8, ``winner``/``loser`` row indices, ``records``."""

    images: torch.Tensor
    winner: torch.Tensor
    loser: torch.Tensor
    records: list[dict]

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, keep: Sequence[int] | torch.Tensor) -> PairSet:
        keep = torch.as_tensor(keep, dtype=torch.long)
        return PairSet(self.images, self.winner[keep], self.loser[keep], [self.records[int(i)] for i in keep])

    def where(self, **fields) -> PairSet:
        """The pairs whose records have every given field value (a tuple value: any of them)."""
        def ok(record: dict) -> bool:
            return all(record.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in fields.items())

        return self.subset([i for i, r in enumerate(self.records) if ok(r)])

    def mirrorable(self) -> PairSet:
        """The pairs whose loser shows its perturbed prompt (flipped relations), so that under that
        prompt the order reverses; a dropped- or duplicated-object loser shows no prompt of the pair."""
        return self.subset([i for i, r in enumerate(self.records) if r.get("kind") not in KINDS])

    @property
    def prompts(self) -> list[str]:
        return [r["prompt"] for r in self.records]

    def digest(self) -> str:
        """A fingerprint of the pairs: their records and every image they use (pairs made again in
        the same folder, same count, differ)."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.records, sort_keys=True).encode())
        for tensor in (self.winner, self.loser, self.images):   # the images are shared, not copied per pair
            h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def shard_paths(folder: str | Path, index: int) -> tuple[Path, Path]:
    base = Path(folder) / SHARDS / f"{index:05d}"
    return base.with_suffix(".safetensors"), base.with_suffix(".jsonl")


def done_shards(folder: str | Path) -> list[int]:
    """Indices of the committed shards, sorted."""
    root = Path(folder) / SHARDS
    return sorted(int(p.stem) for p in root.glob("*.jsonl") if p.stem.isdigit()) if root.is_dir() else []


def pair_group(record: dict) -> str:
    """"drop" for a dropped-object pair (its loser lacks one of the prompt's objects), "duplicate"
    for a duplicated-object one, else "1" or "2-3" flipped relations."""
    if record.get("kind") in KINDS:
        return record["kind"]
    return "1" if record["flips"] == 1 else "2-3"


def group_label(group: str) -> str:
    """How a :func:`pair_group` reads in a sentence: "1 flip", "2-3 flips", "dropped object",
    "duplicated object"."""
    if group in KINDS:
        return {DROP: "dropped object", DUPLICATE: "duplicated object"}[group]
    return f"{group} flip{'' if group == '1' else 's'}"


def check_manifest(folder: str | Path, settings: dict, unrecorded: dict | None = None) -> None:
    """Write the manifest of a new folder, or refuse to extend one made with other settings
    (``unrecorded``: what a manifest without a setting was made with, named so in the refusal)."""
    path = prepare_output_dir(folder, "pair folder") / MANIFEST
    data = read_state_json(path, fix="rerun with --restart (restart=True in Python) to start the pairs over")
    wanted = {"format": FORMAT, "settings": json.loads(json.dumps(settings))}
    if data is None:
        atomic_write_json(path, wanted)
    elif data != wanted:
        changed = sorted(k for k in set(data.get("settings", {})) | set(wanted["settings"])
                         if data.get("settings", {}).get(k) != wanted["settings"].get(k))
        shown = described_changes(data.get("settings", {}), wanted["settings"], changed, unrecorded) or "format"
        raise L2SError(f"{path.parent} holds pairs made with other settings ({shown}); "
                       "rerun with the same ones to resume, --restart to start over, or use another --out")


def clear_pairs(folder: str | Path) -> None:
    """Remove a pair folder's own files (a fresh start); anything else there is kept."""
    remove_outputs(folder, [MANIFEST, PROGRESS, SHARDS], "starting the pairs over")


def write_shard(folder: str | Path, index: int, images: np.ndarray, pairs: Iterable[dict]) -> None:
    """Commit shard ``index``: images (N, H, W, 3) uint8 first, then its pair lines."""
    image_path, pair_path = shard_paths(folder, index)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    atomic_write_bytes(image_path, save({"images": torch.from_numpy(images)}))
    atomic_write_text(pair_path, "".join(json.dumps(p, sort_keys=True) + "\n" for p in pairs))


def write_progress(folder: str | Path, counts: dict) -> None:
    atomic_write_json(Path(folder) / PROGRESS, {"shards_done": len(done_shards(folder)), "pairs": counts})


def read_shard(folder: str | Path, index: int) -> tuple[torch.Tensor, list[dict]]:
    image_path, pair_path = shard_paths(folder, index)
    try:
        images = load_file(str(image_path))["images"]
        records = [json.loads(line) for line in pair_path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise DamagedFileError(f"shard {index} of {folder} cannot be read ({error}); delete "
                               f"{image_path.name} and {pair_path.name} and rerun the command that made it") from None
    return images, records


def _refuse_repeated(folders: list) -> None:
    """A folder given twice would count its pairs twice: refused rather than silently weighted."""
    seen: dict[Path, str | Path] = {}
    for one in folders:
        first = seen.setdefault(Path(one).resolve(), one)
        if first is not one:
            again = f" (as {first})" if str(first) != str(one) else ""
            raise L2SError(f"pair folder {one} is given twice{again}: its pairs would count twice")


def load_pairs(folder: str | Path | Sequence[str | Path], split: str | None = None) -> PairSet:
    """Every committed pair of ``folder`` (``split``: only that split), images shared in one tensor;
    a list of folders (e.g. made with different ``--seed``) gives their pairs together, in order."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    if not folders:
        raise L2SError("no pair folder given")
    if split is not None and split not in SPLITS:
        raise L2SError(f"unknown split {split!r} (choose {', '.join(SPLITS)})")
    _refuse_repeated(folders)
    images, winner, loser, records, offset = [], [], [], [], 0
    for one in folders:
        if not (Path(one) / MANIFEST).is_file():
            why = f"{MANIFEST} missing" if Path(one).is_dir() else "no such folder"
            raise L2SError(f"{one} is not a preference-pair folder ({why}): give one that 'l2s shapes reward-data "
                           "--out DIR' made")
        shards = done_shards(one)
        if not shards:
            raise L2SError(f"{one} has no finished shard yet")
        for index in shards:
            shard_images, shard_records = read_shard(one, index)
            for record in shard_records:
                if split is None or record["split"] == split:
                    winner.append(record["winner"] + offset)
                    loser.append(record["loser"] + offset)
                    records.append(record)
            images.append(shard_images)
            offset += shard_images.shape[0]
    return PairSet(torch.cat(images), torch.tensor(winner, dtype=torch.long), torch.tensor(loser, dtype=torch.long),
                   records)
