"""Training curves in TensorBoard, through accelerate's trackers, when tensorboard is installed.

Every epoch's row of ``log.jsonl`` also goes to ``OUT/tensorboard/<run>/`` (its numbers as scalars,
at the epoch as step): ``tensorboard --logdir OUT/tensorboard``. Without the ``tensorboard``
package (``pip install "l2s[tensorboard]"``) nothing is written there; the panels of ``curves.png``
(:mod:`l2s.evaluation.curves`, drawn either way) are named here.
"""
from __future__ import annotations

from pathlib import Path

TENSORBOARD_DIR = "tensorboard"
RUN_NAME = "classifier"
CLASSIFIER_PANELS = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")),
                     ("learning rate", ("lr",)))

_trackers: dict[Path, object] = {}   # one writer per output folder for the life of the process


def tensorboard_available() -> bool:
    from accelerate.utils import is_tensorboard_available

    return is_tensorboard_available()


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a log row, nested dicts flattened to ``outer/inner`` (strings, lists dropped)."""
    flat: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (bool, int, float)) and value is not None:
            flat[f"{prefix}{key}"] = float(value)
    return flat


def log_epoch(out_dir: str | Path, row: dict, run_name: str = RUN_NAME) -> bool:
    """Log ``row`` (one epoch of ``log.jsonl``; its ``epoch`` is the step) under ``out_dir``.

    Returns whether it was logged (False without tensorboard).
    """
    if not tensorboard_available():
        return False
    folder = Path(out_dir).resolve() / TENSORBOARD_DIR
    if folder not in _trackers:
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(run_name, folder)
        tracker.start()
        _trackers[folder] = tracker
    values = scalars({k: v for k, v in row.items() if k != "epoch"})
    _trackers[folder].log(values, step=int(row.get("epoch", 0)))
    return True


def close_tracker(out_dir: str | Path) -> None:
    """Close ``out_dir``'s writer if one is open (its run ended or failed): a process that trains
    many runs keeps no file open per finished run."""
    tracker = _trackers.pop(Path(out_dir).resolve() / TENSORBOARD_DIR, None)
    if tracker is not None:
        tracker.finish()
