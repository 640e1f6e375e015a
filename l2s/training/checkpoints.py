"""A classifier run's checkpoints and resume state, in a run folder (:mod:`l2s.run_folders`) written
so a crash never leaves half a file.

    out_dir/
      best/   model.safetensors + config.json + README.md (RelationClassifier.save_pretrained) + training.json
      last/   the same for the latest epoch + state.pt (optimizer, scheduler, RNG, counters) to resume
      log.jsonl   one line per epoch: loss / accuracy, train and val, overall and per step index
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from l2s.classifier import RelationClassifier
from l2s.classifier.hub import TRAINING_FILE, read_training_record
from l2s.evaluation.curves import CURVES_FILE
from l2s.files import atomic_torch_save
from l2s.run_folders import STATE_FILE, atomic_dir
from l2s.run_folders import prepare_out_dir as _prepare_out_dir

from .store import META_FILE
from .tracking import TENSORBOARD_DIR, close_tracker


def save_checkpoint(directory: Path, model: RelationClassifier, training: dict, state: dict | None = None) -> None:
    """The model, its training record and (for ``last/``) the resume state, swapped in atomically."""
    def write(tmp: Path) -> None:
        # Weights, config.json and a model card naming the data and the accuracy (a hub-ready folder).
        model.save_pretrained(tmp, model_card_kwargs={"training": training})
        # ClassifierConfig has no field for the training settings: they live beside config.json.
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        if state is not None:
            atomic_torch_save(state, tmp / STATE_FILE)   # a full disk: an OSError naming the file

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


def prepare_out_dir(out_dir: Path, settings: dict, resume: bool, finished=None) -> dict | None:
    """:func:`l2s.run_folders.prepare_out_dir`; starting over also removes the curves (picture, TensorBoard)."""
    return _prepare_out_dir(out_dir, settings, resume, finished, on_restart=close_tracker,
                            also=(CURVES_FILE, TENSORBOARD_DIR))


def trained_on(weights: str | Path) -> str | None:
    """The model whose maps trained the classifier at ``weights`` (a run's ``best/`` or ``last/``, or a
    file in it), as the run recorded it; None when nothing says."""
    folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
    training = read_training_record(folder) or {}
    model = training.get("model")
    if model is None:   # a run that did not record it: its dataset's record, while that is still there
        try:
            model = json.loads((Path(training["dataset"]) / META_FILE).read_text())["settings"]["model"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return model if isinstance(model, str) else None
