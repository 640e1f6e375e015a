"""A training run's folder, whatever it trains: checkpoint folders swapped in whole, the epoch log
(one JSON line per epoch, synced), and the resume state checked against the run's settings.

    out_dir/
      best/, last/   written with :func:`atomic_dir`; last/ holds ``state.pt`` to resume from
      log.jsonl      one row per epoch
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from l2s.errors import L2SError
from l2s.files import (DamagedFileError, atomic_write_text, changed_settings, described_changes, fsync_append,
                       read_jsonl_lines, remove_outputs, unrecorded_later)

LOG_FILE, STATE_FILE = "log.jsonl", "state.pt"
BEST_DIR, LAST_DIR = "best", "last"
# What torch.load, load_state_dict and Generator.set_state raise on a damaged resume state.
DAMAGED = (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError,
           pickle.UnpicklingError, L2SError)
RESTART = "rerun with --restart (resume=False in Python) to train from the start"
# Settings recorded since a release: a run saved without one resumes as before.
RECORDED_LATER = ("dataset_records", "pairs_digest")
Finished = Callable[[dict], bool]   # whether a run's counters say it has nothing left to train
UNRECORDED = {"processes": 1}   # what a run saved without the key ran with


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


def read_log(path: Path, fix: str) -> list[dict]:
    """The log's rows; a torn last line (a kill mid-append) is left out, a damaged line before it
    is a :class:`~l2s.files.DamagedFileError` naming the line (ending with ``fix``)."""
    rows = [row for _, row in read_jsonl_lines(path, fix=fix)]
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("epoch"), int):
            raise DamagedFileError(f"{path}: row {number} has no epoch number; {fix}")
    return rows


def rewrite_log(path: Path, rows: list[dict]) -> None:
    """Replace the log with ``rows`` atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_log(path: Path, row: dict) -> None:
    """Append one row and sync it to disk."""
    fsync_append(path, [json.dumps(row) + "\n"])


def prepare_out_dir(out_dir: Path, settings: dict, resume: bool, finished: Finished | None = None,
                    on_restart: Callable[[Path], None] | None = None, also: Sequence[str] = ()) -> dict | None:
    """Recover interrupted checkpoint swaps; the resume state of ``last/`` (checked against
    ``settings``, see :func:`read_resume_state`) when resuming, else clear a previous run (and the
    names ``also``, said with the others). Returns the state or None. ``on_restart(out_dir)`` runs
    first when starting over (to close what holds those files open)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    best_dir, last_dir, log_path = out_dir / BEST_DIR, out_dir / LAST_DIR, out_dir / LOG_FILE
    for directory in (best_dir, last_dir):
        recover_dir(directory)
    if resume and (last_dir / STATE_FILE).is_file():
        return read_resume_state(out_dir, settings, finished)
    if not resume:
        if on_restart is not None:
            on_restart(out_dir)
        # last/ first: a kill part-way must not leave a run that resumes
        remove_outputs(out_dir, [last_dir.name, best_dir.name, log_path.name, *also], "starting the training over")
    return None


def read_resume_state(out_dir: Path, settings: dict, finished: Finished | None = None) -> dict:
    """The resume state of ``out_dir/last``, checked against ``settings`` (read-only: the other
    ranks of a spread run read it after rank 0's :func:`prepare_out_dir`). A run that ``finished``
    (its counters say so) is its result whatever number of processes asks again."""
    last_dir = out_dir / LAST_DIR
    try:
        import torch

        state = torch.load(last_dir / STATE_FILE, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
    except DAMAGED as error:
        raise DamagedFileError(f"{last_dir / STATE_FILE} is damaged ({type(error).__name__}); "
                               f"{RESTART}") from None
    settings = unrecorded_later(saved, settings, RECORDED_LATER)
    differing = changed_settings(saved, settings)
    if differing == ["processes"] and finished is not None and finished(json.loads(state["counters"])):
        return state
    if differing == ["epochs"] and "epochs" in settings:   # the reward model's schedule spans the run
        raise L2SError(f"{out_dir} holds a run laid out for {saved['epochs']} epochs (its learning-rate schedule "
                       f"depends on it); rerun with --epochs {saved['epochs']} to resume it, or --restart "
                       f"(resume=False in Python) to train {settings['epochs']} from the start")
    if differing == ["processes"]:   # data-parallel batches are split by process count
        ran_on, now = (s.get("processes", UNRECORDED["processes"]) for s in (saved, settings))
        raise L2SError(f"{out_dir} holds a run trained on {ran_on} process(es), this one has {now}: "
                       f"resume it on {ran_on}, or rerun with --restart (resume=False in Python) to start over")
    if differing:
        changes = described_changes(saved, settings, differing, UNRECORDED)
        raise L2SError(f"{out_dir} holds a run with other settings ({changes}); "
                       f"rerun with --restart (resume=False in Python) to start over, or use another --out")
    return state
