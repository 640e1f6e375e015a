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
ends training at once (:class:`TrainingDivergedError`), before anything of that epoch is saved.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from l2s.classifier import ClassifierConfig, RelationClassifier, preset
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.distributed import World, output_lock, world
from l2s.files import DamagedFileError
from .checkpoints import (
    BEST_DIR,
    DAMAGED,
    LAST_DIR,
    LOG_FILE,
    RESTART,
    append_log,
    prepare_out_dir,
    read_log,
    read_resume_state,
    resume_state,
    rewrite_log,
    save_checkpoint,
)
from .layers import dataset_channels, with_first_blocks
from .options import check_training_options
from .parallel import (
    RankBatches,
    collate_slice,
    global_batch_size,
    restore_rng,
    rng_states,
    seed_dropout,
    val_share,
)
from .reader import AttentionMapDataset
from .store import load_dataset_meta, verify_dataset
from .tracking import log_epoch

log = logging.getLogger(__name__)

WEIGHT_DECAY = 0.05
LR_FACTOR, LR_PATIENCE, MIN_LR = 0.5, 5, 1e-6
EARLY_STOPPING_PATIENCE = 10
VAL_BATCH_SIZE = 256
# Per-family learning rates and epoch limits; their keys are the classifier presets.
DEFAULT_LR = {"flux-dev": 5e-5, "flux-schnell": 5e-5, "sd14": 1e-4, "sd21": 1e-4}
DEFAULT_EPOCHS = {"flux-dev": 200, "flux-schnell": 200, "sd14": 150, "sd21": 100}


class TrainingDivergedError(L2SError):
    """The loss stopped being finite; nothing of the epoch it happened in was saved."""


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


def _resolve_config(config: ClassifierConfig | str, meta: dict, layers: int | None = None) -> ClassifierConfig:
    """The classifier config, checked against (or, for a preset name, completed from) the dataset;
    ``layers=K``: a classifier of the dataset's first K layers (:mod:`.layers`)."""
    if isinstance(config, str):
        overrides = dict(class_names=tuple(meta["class_names"]), map_size=meta["map_size"])
        if meta.get("orig_map_size"):
            overrides["orig_map_size"] = meta["orig_map_size"]
        if meta.get("layer_layout"):
            overrides["layer_layout"] = meta["layer_layout"]
        config = preset(config, channels=meta["channels"], **overrides)
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


def _family(config: ClassifierConfig) -> str:
    return config.model_family if config.model_family in DEFAULT_LR else "sd14"


class _EpochTally:
    """Loss and accuracy over an epoch's batches, overall and per step index."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.per_step: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # step -> [correct, seen]

    def add(self, loss_sum: float, logits: torch.Tensor, labels: torch.Tensor, steps: torch.Tensor) -> None:
        self.loss_sum += loss_sum
        hits = (logits.argmax(dim=1) == labels).tolist()
        for step, hit in zip(steps.tolist(), hits):
            self.per_step[step][0] += int(hit)
            self.per_step[step][1] += 1

    def merged(self, group: World) -> _EpochTally:
        """The tally of every rank's batches (the same on every rank)."""
        if not group.spread:
            return self
        merged = _EpochTally()
        for loss_sum, per_step in group.gather((self.loss_sum, dict(self.per_step))):
            merged.loss_sum += loss_sum
            for step, (correct, seen) in per_step.items():
                merged.per_step[step][0] += correct
                merged.per_step[step][1] += seen
        return merged

    def summary(self) -> dict:
        total = sum(n for _, n in self.per_step.values())
        if total == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "per_step": {}}
        correct = sum(c for c, _ in self.per_step.values())
        return {"loss": self.loss_sum / total, "accuracy": correct / total,
                "per_step": {str(s): c / n for s, (c, n) in sorted(self.per_step.items())}}


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: str) -> dict:
    model.eval()
    tally = _EpochTally()
    for maps, steps, labels in loader:
        maps, steps, labels = maps.to(device), steps.to(device), labels.to(device)
        logits = model(maps, steps)
        tally.add(nn.functional.cross_entropy(logits, labels, reduction="sum").item(), logits, labels, steps)
    return tally.merged(world()).summary()


def _training_settings(config: ClassifierConfig, meta: dict, lr: float, batch_size: int, seed: int,
                       prompt_types: Sequence[str] | None) -> dict:
    """Everything that must match for a resumed run to continue the same training (the dataset is
    identified by its settings hash, so a moved dataset directory still resumes)."""
    return {"dataset_settings_hash": meta.get("settings_hash"),
            "classifier": config.to_json(), "lr": lr, "weight_decay": WEIGHT_DECAY, "batch_size": batch_size,
            "seed": seed, "prompt_types": list(prompt_types) if prompt_types else None,
            "scheduler": {"factor": LR_FACTOR, "patience": LR_PATIENCE, "min_lr": MIN_LR},
            "early_stopping_patience": EARLY_STOPPING_PATIENCE}


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
) -> TrainResult:
    """Train a :class:`RelationClassifier` on the ``train`` split, validating on ``val``.

    Args:
        dataset_dir: a map dataset (:func:`l2s.training.make_dataset`).
        out_dir: where ``best/``, ``last/`` and ``log.jsonl`` go.
        config: a :class:`ClassifierConfig` (must fit the dataset's channels and map size) or a
            preset name ("flux-dev", "flux-schnell", "sd14", "sd21") completed from the dataset.
        epochs: the total epoch limit (default 200 FLUX / 150 SD1.4 / 100 SD2.1); a resumed run
            continues up to this many epochs in total.
        batch_size: training batch (published 64; validation uses 256).
        lr: AdamW learning rate (default 5e-5 FLUX / 1e-4 SD; a "custom" family gets the SD defaults).
        seed: seeds the initial weights, shuffling and dropout.
        device: torch device.
        resume: continue from ``out_dir/last`` when it exists; False: start over (``--restart``).
        prompt_types: train only on these prompt types (e.g. ``("pos",)``: the leakage ablation).
        num_workers: DataLoader workers.
        progress: show a tqdm bar over epochs.
        layers: train a classifier of the dataset's first ``layers`` layers only (one attention
            layer per transformer block: steering then cuts the forward after that block).
    """
    check_training_options(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, num_workers=num_workers,
                           device=device)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    meta = load_dataset_meta(dataset_dir)
    config = _resolve_config(config, meta, layers)
    family = _family(config)
    lr = float(lr if lr is not None else DEFAULT_LR[family])
    max_epochs = int(epochs if epochs is not None else DEFAULT_EPOCHS[family])
    group = world()
    with output_lock(out_dir):  # a second writer is refused before the dataset is read
        train_set, val_set = _splits(dataset_dir, config, prompt_types)
        group.on_main(lambda: verify_dataset(dataset_dir))  # every shard's checksum, once, before any epoch
        settings = _training_settings(config, meta, lr, batch_size, seed, prompt_types)
        if group.spread:  # each rank's dropout stream is resumed, so a resumed run needs as many ranks
            settings["processes"] = group.size
        resumed = group.on_main(lambda: prepare_out_dir(out_dir, settings, resume) is not None)
        state = read_resume_state(out_dir, settings) if resumed else None
        return _train(dataset_dir, out_dir, config, train_set, val_set, settings, state, max_epochs, seed, device,
                      num_workers, progress)


def _train(dataset_dir: Path, out_dir: Path, config: ClassifierConfig, train_set: AttentionMapDataset,
           val_set: AttentionMapDataset, settings: dict, state: dict | None, max_epochs: int, seed: int,
           device: str, num_workers: int, progress: bool) -> TrainResult:
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
        if state is not None:
            try:
                run.restore(state, last_dir, devices)
            except DAMAGED as error:
                raise DamagedFileError(f"the resume state in {last_dir} is damaged ({type(error).__name__}: "
                                       f"{str(error)[:200]}); {RESTART}") from None
        history = [row for row in read_log(log_path, RESTART) if row["epoch"] <= run.counters["epoch"]]
        if group.is_main:
            rewrite_log(log_path, history)  # drop lines of an epoch whose state never got saved
        train_loader, val_loader = _loaders(train_set, val_set, run.shuffle, batch_size, num_workers, group)
        counters = run.counters
        with tqdm(total=max_epochs, initial=min(counters["epoch"], max_epochs), disable=not (progress and group.is_main),
                  desc="l2s train", unit="epoch") as bar:
            while counters["epoch"] < max_epochs and not counters["stopped_early"]:
                row = run.epoch(train_loader, val_loader, device)
                history.append(row)
                training = {**settings, "dataset": str(dataset_dir.resolve()), "epoch": counters["epoch"],
                            "max_epochs": max_epochs, "best_epoch": counters["best_epoch"],
                            "best_val_loss": counters["best_val_loss"],
                            "best_val_accuracy": counters["best_val_accuracy"],
                            "train_samples": len(train_set), "val_samples": len(val_set)}
                rank_rngs = group.gather(rng_states(devices)) if group.spread else None
                if group.is_main:
                    _save_epoch(run, row, training, rank_rngs, out_dir, settings, devices)
                bar.set_postfix(train_acc=f"{row['train_accuracy']:.3f}", val_acc=f"{row['val_accuracy']:.3f}",
                                val_loss=f"{row['val_loss']:.4f}")
                bar.update()
    return TrainResult(out_dir, best_dir, last_dir, counters["best_epoch"], counters["best_val_loss"],
                       counters["best_val_accuracy"], counters["epoch"], counters["stopped_early"], history)


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
    if len(val_set) == 0:
        raise L2SError(f"no validation samples in {dataset_dir} at step indices {list(config.timesteps)}")
    return train_set, val_set


@dataclass
class _Training:
    """What an epoch changes: the model, optimizer, scheduler, shuffling generator and counters."""

    model: RelationClassifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator
    counters: dict

    @classmethod
    def start(cls, config: ClassifierConfig, lr: float, seed: int, device: str) -> _Training:
        model = RelationClassifier(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=LR_FACTOR,
                                                               patience=LR_PATIENCE, min_lr=MIN_LR, threshold=0.0)
        shuffle = torch.Generator().manual_seed(seed)
        counters = {"epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "best_val_accuracy": 0.0,
                    "bad_epochs": 0, "stopped_early": False}
        return cls(model, optimizer, scheduler, shuffle, counters)

    def restore(self, state: dict, last_dir: Path, devices: list[int]) -> None:
        """Continue from ``last/``: weights, optimizer, scheduler, RNG streams and counters."""
        self.model.load_state_dict(RelationClassifier.load(last_dir).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(json.loads(state["scheduler"]))
        self.shuffle.set_state(state["shuffle_rng"])
        restore_rng(state, world(), devices)
        self.counters.update(json.loads(state["counters"]))

    def epoch(self, train_loader: DataLoader, val_loader: DataLoader, device: str) -> dict:
        """Train one epoch, validate, step the scheduler and the early stopping; the log row."""
        started = time.perf_counter()
        model, counters = self.model, self.counters
        model.train()
        tally = _EpochTally()
        group = world()
        size, total = train_loader.batch_sampler.batch_size, len(train_loader.dataset)
        for number, batch in enumerate(train_loader):
            if group.spread:
                self._shared_step(batch, global_batch_size(number, size, total), tally, device, group)
            else:
                self._step(batch, tally, device)
        train = tally.merged(group).summary()
        val = _evaluate(model, val_loader, device)
        if not math.isfinite(val["loss"]):
            self._diverged("validation", val["loss"], None)
        self.scheduler.step(val["loss"])
        counters["epoch"] += 1
        improved = val["loss"] < counters["best_val_loss"]
        if improved:
            counters.update(best_epoch=counters["epoch"], best_val_loss=val["loss"],
                            best_val_accuracy=val["accuracy"], bad_epochs=0)
        else:
            counters["bad_epochs"] += 1
            counters["stopped_early"] = counters["bad_epochs"] >= EARLY_STOPPING_PATIENCE
        return {"epoch": counters["epoch"], "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                "train_accuracy_per_step": train["per_step"],
                "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                "val_accuracy_per_step": val["per_step"], "best": improved,
                "seconds": round(time.perf_counter() - started, 3)}

    def _step(self, batch: list[torch.Tensor], tally: _EpochTally, device: str) -> None:
        """One optimizer step on one batch."""
        maps, steps, labels = (t.to(device) for t in batch)
        logits = self.model(maps, steps)
        loss = nn.functional.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            self._diverged("training", loss.item(), maps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        tally.add(loss.item() * len(labels), logits, labels, steps)

    def _shared_step(self, batch: list[torch.Tensor] | None, batch_total: int, tally: _EpochTally, device: str,
                     group: World) -> None:
        """This rank's slice of a global batch (``batch_total`` samples; None: an empty slice): its
        summed loss over ``batch_total``, gradients summed over the ranks, then the common step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, maps = torch.zeros((), device=device), None
        if batch is not None:
            maps, steps, labels = (t.to(device) for t in batch)
            logits = self.model(maps, steps)
            loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
            (loss_sum / batch_total).backward()
            tally.add(loss_sum.item(), logits, labels, steps)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        summed = loss_sum.detach().reshape(1).clone()
        group.sum_([p.grad for p in params] + [summed])
        if not torch.isfinite(summed).all():
            self._diverged("training", summed.item() / batch_total, maps)
        self.optimizer.step()

    def _diverged(self, which: str, loss: float, maps: torch.Tensor | None) -> None:
        """Stop at once: say in which epoch, and whether the data or the learning rate is to blame."""
        epoch = self.counters["epoch"] + 1
        if maps is not None and not torch.isfinite(maps).all():
            raise TrainingDivergedError(f"epoch {epoch}: the dataset holds non-finite maps (the {which} loss "
                                        f"is {loss}); remake the dataset")
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDivergedError(f"training diverged in epoch {epoch}: the {which} loss is {loss} at "
                                    f"learning rate {lr:g}; nothing of epoch {epoch} was saved; lower the "
                                    f"learning rate (--lr) and start over (--restart)")
