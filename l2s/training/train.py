"""Train the relation classifier on a map dataset.

Recipe: AdamW (weight decay 0.05), lr 5e-5 (FLUX) / 1e-4 (SD), batch 64, ReduceLROnPlateau on the
validation loss (factor 0.5, patience 5, min lr 1e-6), at most 200 (FLUX) / 150 (SD1.4) / 100
(SD2.1) epochs, early stopping after 10 epochs without a better validation loss, cross-entropy.
Samples are filtered to the classifier's trained step indices. The checkpoint kept as ``best/`` is
the one with the best validation loss, and the validation loss is the mean over samples.

The output directory is described in :mod:`.checkpoints`. Resuming (``resume=True``, the default)
continues from ``last/`` and gives exactly the weights an uninterrupted run would have: the
shuffling generator, the global RNG (dropout) and every optimizer / scheduler / early-stopping
counter are restored. The output directory is locked while training runs, the dataset's shards
are checked against their checksums before the first epoch, and a loss that stops being finite
ends training at once (:class:`~.epochs.TrainingDivergedError`), before anything of that epoch is saved.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from l2s.classifier import ClassifierConfig, preset
from l2s.classifier.config import FAMILY_CHANNELS
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.distributed import World, output_lock, world
from l2s.evaluation.curves import save_curves
from l2s.files import DamagedFileError
from l2s.run_folders import (
    BEST_DIR,
    DAMAGED,
    LAST_DIR,
    LOG_FILE,
    RESTART,
    append_log,
    read_log,
    read_resume_state,
    rewrite_log,
)

from .checkpoints import prepare_out_dir, resume_state, save_checkpoint
from .layers import dataset_channels, with_first_blocks
from .epochs import (
    EARLY_STOPPING_PATIENCE,
    LR_FACTOR,
    LR_PATIENCE,
    MIN_LR,
    WEIGHT_DECAY,
    _Training,
)
from .options import check_training_options
from .parallel import (
    RankBatches,
    collate_slice,
    rng_states,
    seed_dropout,
    val_share,
)
from .reader import AttentionMapDataset
from .store import load_dataset_meta, verify_dataset
from .tracking import CLASSIFIER_PANELS, close_tracker, log_epoch

log = logging.getLogger(__name__)

VAL_BATCH_SIZE = 256
# Per-family learning rates and epoch limits; their keys are the classifier presets.
DEFAULT_LR = {"flux-dev": 5e-5, "flux-schnell": 5e-5, "sd14": 1e-4, "sd21": 1e-4}
DEFAULT_EPOCHS = {"flux-dev": 200, "flux-schnell": 200, "sd14": 150, "sd21": 100}


@dataclass
class TrainResult:
    """Where the checkpoints are and how training went."""

    out_dir: Path
    best_dir: Path
    last_dir: Path
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    epochs_run: int  # epochs completed in total (including those of resumed runs)
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    epochs_resumed: int = 0  # epochs an earlier run had finished when this one started


def resume_message(out_dir: Path, epochs_done: int, finished: bool, stopped_early: bool) -> str:
    """``l2s: ...`` saying what a run takes from the earlier one in ``out_dir`` (``epochs_done``
    epochs; ``finished``: it has none left to train)."""
    epochs = f"{epochs_done} epoch{'s' * (epochs_done != 1)}"
    if finished and stopped_early:
        return (f"l2s: {out_dir} holds a run that stopped early after {epochs} (validation "
                "stopped improving): the result is its; --restart trains again")
    if finished:
        return (f"l2s: {out_dir} holds a finished run ({epochs}): the result is its; more "
                "--epochs continue it, --restart trains again")
    return f"l2s: resumed after epoch {epochs_done} of the earlier run in {out_dir}"


def _resolve_config(config: ClassifierConfig | str, meta: dict, layers: int | None = None) -> ClassifierConfig:
    """The classifier config, checked against (or, for a preset name, completed from) the dataset;
    ``layers=K``: a classifier of the dataset's first K layers (:mod:`.layers`)."""
    if not isinstance(config, (str, ClassifierConfig)):
        raise L2SError(f"config must be a ClassifierConfig or a preset name, got {type(config).__name__}")
    if isinstance(config, str):
        overrides = dict(class_names=tuple(meta["class_names"]), map_size=meta["map_size"])
        if meta.get("orig_map_size"):
            overrides["orig_map_size"] = meta["orig_map_size"]
        if meta.get("layer_layout"):
            overrides["layer_layout"] = meta["layer_layout"]
        if meta.get("store_steps") and meta.get("num_steps"):   # the steps the dataset has maps of
            overrides.update(timesteps=tuple(meta["store_steps"]), num_timesteps=meta["num_steps"])
        try:
            config = preset(config, channels=meta["channels"], **overrides)
        except ValueError as error:    # an unknown preset name
            raise L2SError(str(error)) from None
        _check_preset_family(config.model_family, meta)
    if layers is not None:
        config = with_first_blocks(config, meta, layers)
    selected = dataset_channels(meta, config.layer_layout)
    available = meta["channels"] if selected is None else len(selected)
    if config.channels != available:
        raise ClassifierMismatchError(f"the classifier takes {config.channels} maps per object but the dataset "
                                      f"has {available}")
    if config.map_size != meta["map_size"]:
        raise ClassifierMismatchError(f"the classifier takes {config.map_size}x{config.map_size} maps but the "
                                      f"dataset has {meta['map_size']}x{meta['map_size']}")
    stored = set(meta.get("store_steps") or [])
    if stored and not stored & set(config.timesteps):
        raise ClassifierMismatchError(f"the classifier's step indices {list(config.timesteps)} are not among the "
                                      f"dataset's stored steps {sorted(stored)}")
    missing = sorted(set(config.timesteps) - stored) if stored else []
    if missing:
        log.warning("the dataset has no maps for step indices %s of the classifier", missing)
    return config


def _check_preset_family(family: str, meta: dict) -> None:
    """Refuse a preset of another model family than the dataset's: the classifier would be recorded
    (and sized, and trained) as that family's while it reads, and can steer, only the dataset's model."""
    recorded = meta.get("model_family")
    if recorded in DEFAULT_LR and family != recorded:
        raise L2SError(f"the dataset holds maps of a {recorded} model but the classifier preset {family!r} is for "
                       f"{family} models: use the preset {recorded!r} ('l2s train': leave --preset out)")


def _family(config: ClassifierConfig) -> str:
    return config.model_family if config.model_family in DEFAULT_LR else "sd14"


def _lr_and_epochs(config: ClassifierConfig, lr: float | None, epochs: int | None) -> tuple[float, int]:
    """The learning rate and epoch limit: the caller's, else the recipe's for the classifier's family."""
    family = _family(config)
    lr = float(lr if lr is not None else DEFAULT_LR[family])
    return lr, int(epochs if epochs is not None else DEFAULT_EPOCHS[family])


def _training_settings(config: ClassifierConfig, meta: dict, lr: float, batch_size: int, seed: int,
                       prompt_types: Sequence[str] | None, records: dict[str, int], group: World) -> dict:
    """Everything that must match for a resumed run to continue the same training (the dataset is
    identified by its settings hash, so a moved dataset directory still resumes); ``records``: the
    train and val splits' sizes."""
    settings = {"dataset_settings_hash": meta.get("settings_hash"),
                "classifier": config.to_json(), "lr": lr, "weight_decay": WEIGHT_DECAY, "batch_size": batch_size,
                "seed": seed, "prompt_types": list(prompt_types) if prompt_types else None,
                "scheduler": {"factor": LR_FACTOR, "patience": LR_PATIENCE, "min_lr": MIN_LR},
                "early_stopping_patience": EARLY_STOPPING_PATIENCE}
    settings["dataset_records"] = records   # a grown dataset differs
    if group.spread:  # each rank's dropout stream is resumed, so a resumed run needs as many ranks
        settings["processes"] = group.size
    return settings


def train_classifier(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: ClassifierConfig | str,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = True,
    *,
    prompt_types: Sequence[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    layers: int | None = None,
    on_resume: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a :class:`RelationClassifier` on the ``train`` split, validating on ``val``.

    Args:
        dataset_dir: a map dataset (:func:`l2s.training.make_dataset`).
        out_dir: where ``best/``, ``last/`` and ``log.jsonl`` go.
        config: a :class:`ClassifierConfig` (must fit the dataset's channels and map size) or a
            preset name ("flux-dev", "flux-schnell", "sd14", "sd21") completed from the dataset
            (its classes, map size, layers, and the step indices it stored maps at).
        epochs: the total epoch limit (default 200 FLUX / 150 SD1.4 / 100 SD2.1); a resumed run
            continues up to this many epochs in total.
        batch_size: training batch (published 64; validation uses 256).
        lr: AdamW learning rate (default 5e-5 FLUX / 1e-4 SD; a "custom" family gets the SD defaults).
        seed: seeds the initial weights, shuffling and dropout.
        device: torch device.
        resume: continue from ``out_dir/last`` when it exists; False: start over (``--restart``).
        prompt_types: train only on these prompt types (e.g. ``("pos",)``: the leakage ablation).
        num_workers: DataLoader workers.
        progress: show a tqdm bar over epochs (and one over the checksums of a large dataset first).
        layers: train a classifier of the dataset's first ``layers`` layers only (one attention
            layer per transformer block: steering then cuts the forward after that block).
        on_resume: called with a line (:func:`resume_message`) when the run resumes an earlier one,
            before its first epoch (a front end prints it then, not only at the end).
    """
    check_training_options(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, num_workers=num_workers,
                           device=device, layers=layers, resume=resume, prompt_types=prompt_types)
    dataset_dir, out_dir = _folder_paths(dataset_dir, out_dir)
    meta = load_dataset_meta(dataset_dir)
    config = _resolve_config(config, meta, layers)
    lr, max_epochs = _lr_and_epochs(config, lr, epochs)
    group = world()
    with output_lock(out_dir, kind="train"):  # a second writer is refused before the dataset is read
        train_set, val_set = _splits(dataset_dir, config, prompt_types)
        group.on_main(lambda: verify_dataset(dataset_dir, progress))  # every shard's checksum, once, before any epoch
        settings = _training_settings(config, meta, lr, batch_size, seed, prompt_types,
                                      {"train": len(train_set), "val": len(val_set)}, group)
        state = _earlier_run(out_dir, settings, resume, max_epochs, group)
        try:
            return _train(dataset_dir, out_dir, config, train_set, val_set, settings, state, max_epochs, seed,
                          device, num_workers, progress, on_resume)
        finally:
            close_tracker(out_dir)


def _folder_paths(dataset_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """The dataset and output folders as paths (a one-line error for anything else passed in their place)."""
    for name, folder in (("dataset_dir", dataset_dir), ("out_dir", out_dir)):
        if not isinstance(folder, (str, Path)):
            raise L2SError(f"{name} must be a folder path, got {folder!r}")
    return Path(dataset_dir), Path(out_dir)


def _earlier_run(out_dir: Path, settings: dict, resume: bool, max_epochs: int, group: World) -> dict | None:
    """The resume state of the earlier run in ``out_dir`` (None: training starts over). Rank 0 prepares
    the folder (starting over clears it), then every rank reads the state."""
    finished = lambda counters: counters["stopped_early"] or counters["epoch"] >= max_epochs  # noqa: E731
    resumed = group.on_main(lambda: prepare_out_dir(out_dir, settings, resume, finished) is not None)
    return read_resume_state(out_dir, settings, finished) if resumed else None


def _source_model(dataset_dir: Path) -> dict:
    """``{"model": ..., "model_family": ...}``: the model whose maps the dataset holds, as make-data
    recorded it (kept beside the weights, so a mismatch can name it after the dataset moved, and
    steering another model warns), each where known: synthetic maps have no model."""
    meta = load_dataset_meta(dataset_dir)
    settings = meta.get("settings") or {}
    model, family = settings.get("model"), meta.get("model_family")
    found = {"model": model} if isinstance(model, str) else {}
    if family in FAMILY_CHANNELS and not settings.get("synthetic"):
        found["model_family"] = family
    return found


def _train(dataset_dir: Path, out_dir: Path, config: ClassifierConfig, train_set: AttentionMapDataset,
           val_set: AttentionMapDataset, settings: dict, state: dict | None, max_epochs: int, seed: int,
           device: str, num_workers: int, progress: bool,
           on_resume: Callable[[str], None] | None = None) -> TrainResult:
    """The epochs of :func:`train_classifier`, from ``state`` (a resumed run) or from the start."""
    lr, batch_size = settings["lr"], settings["batch_size"]
    best_dir, last_dir, log_path = out_dir / BEST_DIR, out_dir / LAST_DIR, out_dir / LOG_FILE

    # fork_rng: training uses the global RNG (dropout) without disturbing the caller's stream.
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    group = world()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        run = _Training.start(config, lr, seed, device)
        seed_dropout(seed, group)
        history = _resume(run, state, last_dir, log_path, devices, group)
        train_loader, val_loader = _loaders(train_set, val_set, run.shuffle, batch_size, num_workers, group)
        counters = run.counters
        resumed_at = counters["epoch"]
        if resumed_at and on_resume is not None and group.is_main:   # said now, not after the epochs
            finished = counters["stopped_early"] or resumed_at >= max_epochs
            on_resume(resume_message(out_dir, resumed_at, finished, counters["stopped_early"]))
        source = {"dataset": str(dataset_dir.resolve()), **_source_model(dataset_dir)}   # read once, kept per epoch
        with tqdm(total=max_epochs, initial=min(counters["epoch"], max_epochs),
                  disable=not (progress and group.is_main), desc="l2s train", unit="epoch") as bar:
            while counters["epoch"] < max_epochs and not counters["stopped_early"]:
                row = run.epoch(train_loader, val_loader, device)
                history.append(row)
                training = {**settings, **source, "epoch": counters["epoch"],
                            "max_epochs": max_epochs, "best_epoch": counters["best_epoch"],
                            "best_val_loss": counters["best_val_loss"],
                            "best_val_accuracy": counters["best_val_accuracy"],
                            "train_samples": len(train_set), "val_samples": len(val_set)}
                rank_rngs = group.gather(rng_states(devices)) if group.spread else None
                if group.is_main:
                    _save_epoch(run, row, training, rank_rngs, out_dir, settings, devices)
                    save_curves(out_dir, history, CLASSIFIER_PANELS, f"relation classifier: {out_dir}")
                bar.set_postfix(train_acc=f"{row['train_accuracy']:.3f}", val_acc=f"{row['val_accuracy']:.3f}",
                                val_loss=f"{row['val_loss']:.4f}")
                bar.update()
    return TrainResult(out_dir, best_dir, last_dir, counters["best_epoch"], counters["best_val_loss"],
                       counters["best_val_accuracy"], counters["epoch"], counters["stopped_early"], history,
                       resumed_at)


def _resume(run: _Training, state: dict | None, last_dir: Path, log_path: Path, devices: list,
            group: World) -> list[dict]:
    """Restore a resumed run's ``state``; the log's rows of the epochs it saved (the others dropped)."""
    if state is not None:
        try:
            run.restore(state, last_dir, devices)
        except DAMAGED as error:
            raise DamagedFileError(f"the resume state in {last_dir} is damaged ({type(error).__name__}: "
                                   f"{str(error)[:200]}); {RESTART}") from None
    history = [row for row in read_log(log_path, RESTART) if row["epoch"] <= run.counters["epoch"]]
    if group.is_main:
        rewrite_log(log_path, history)  # drop lines of an epoch whose state never got saved
    return history


def _loaders(train_set: AttentionMapDataset, val_set: AttentionMapDataset, shuffle: torch.Generator, batch_size: int,
             num_workers: int, group: World) -> tuple[DataLoader, DataLoader]:
    """The epoch's batches in the seeded order; a spread run's rank gets its slice of each (:mod:`.parallel`)."""
    order = RandomSampler(train_set, generator=shuffle)
    if not group.spread:
        train = DataLoader(train_set, batch_size=batch_size, sampler=order, num_workers=num_workers)
    else:
        train = DataLoader(train_set, batch_sampler=RankBatches(order, batch_size, group), collate_fn=collate_slice,
                           num_workers=num_workers)
    val = DataLoader(val_share(val_set, group), batch_size=VAL_BATCH_SIZE, shuffle=False, num_workers=num_workers)
    return train, val


def _save_epoch(run: _Training, row: dict, training: dict, rank_rngs: list | None, out_dir: Path, settings: dict,
                devices: list[int]) -> None:
    """The epoch's checkpoints and log line (rank 0 of a spread run writes them alone)."""
    if row["best"]:
        save_checkpoint(out_dir / BEST_DIR, run.model, training)
    append_log(out_dir / LOG_FILE, row)
    log_epoch(out_dir, row)            # TensorBoard too, when it is installed (.tracking)
    state = resume_state(run.optimizer, run.scheduler, run.shuffle, run.counters, settings, devices)
    if rank_rngs is not None:
        state["rank_rngs"] = rank_rngs
    save_checkpoint(out_dir / LAST_DIR, run.model, training, state)


def _splits(dataset_dir: Path, config: ClassifierConfig,
            prompt_types: Sequence[str] | None) -> tuple[AttentionMapDataset, AttentionMapDataset]:
    """The train and val splits at the classifier's step indices (neither may be empty)."""
    train_set = AttentionMapDataset(dataset_dir, "train", config.timesteps, prompt_types, config.class_names,
                                    config.layer_layout)
    val_set = AttentionMapDataset(dataset_dir, "val", config.timesteps, prompt_types, config.class_names,
                                  config.layer_layout)
    if len(train_set) == 0:
        raise L2SError(f"no training samples in {dataset_dir} at step indices {list(config.timesteps)}")
    if len(val_set) == 0:   # the split is make-data's (by source image): the fix is there
        raise L2SError(f"no validation samples in {dataset_dir} at step indices {list(config.timesteps)}: "
                       "make the dataset from more labelled images, or with a larger --val-fraction "
                       "('l2s make-data ... --restart')")
    return train_set, val_set


