"""Checkpoints and the epoch log of a training run, written so a crash never leaves half a file.

    out_dir/
      best/   model.safetensors + config.json (RelationClassifier.save) + training.json
      last/   the same for the latest epoch + state.pt (optimizer, scheduler, RNG, counters) to resume
      log.jsonl   one line per epoch: loss / accuracy, train and val, overall and per step index
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from l2s.classifier import RelationClassifier

LOG_FILE, STATE_FILE, TRAINING_FILE = "log.jsonl", "state.pt", "training.json"
BEST_DIR, LAST_DIR = "best", "last"


def atomic_dir(target: Path, write) -> None:
    """Fill ``target`` via ``write(tmp_dir)`` so a crash never leaves a half-written checkpoint."""
    tmp, old = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Undo a checkpoint swap that a crash interrupted (``target`` moved away, new one not in)."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)
    shutil.rmtree(target.with_name(target.name + ".new"), ignore_errors=True)


def save_checkpoint(directory: Path, model: RelationClassifier, training: dict, state: dict | None = None) -> None:
    """The model, its training record and (for ``last/``) the resume state, swapped in atomically."""
    def write(tmp: Path) -> None:
        model.save(tmp)
        # ClassifierConfig has no field for the training settings: they live beside config.json.
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / STATE_FILE)

    atomic_dir(directory, write)


def resume_state(optimizer, scheduler, shuffle: torch.Generator, counters: dict, settings: dict,
                 devices: list[int]) -> dict:
    """Tensors and primitives only, so ``torch.load(weights_only=True)`` reads it back."""
    state = {"optimizer": optimizer.state_dict(),
             # The scheduler's state holds floats like inf; JSON keeps it a plain string.
             "scheduler": json.dumps(scheduler.state_dict()),
             "shuffle_rng": shuffle.get_state(), "cpu_rng": torch.get_rng_state(),
             "counters": json.dumps(counters), "settings": json.dumps(settings)}
    if devices:
        state["cuda_rng"] = torch.cuda.get_rng_state(devices[0])
    return state


def read_log(path: Path) -> list[dict]:
    """The log's rows up to the first torn line."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def rewrite_log(path: Path, rows: list[dict]) -> None:
    """Replace the log with ``rows`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def append_log(path: Path, row: dict) -> None:
    """Append one row and sync it to disk."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------
# CLI: l2s train
