"""One epoch of classifier training: the optimiser, scheduler and early stopping it steps, the
tally of its losses and accuracies, and the stop when a loss stops being finite (the recipe is in
:mod:`.train`)."""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from l2s.classifier import ClassifierConfig, RelationClassifier
from l2s.distributed import World, world
from l2s.errors import L2SError
from .parallel import global_batch_size, restore_rng, stand_in

WEIGHT_DECAY = 0.05
LR_FACTOR, LR_PATIENCE, MIN_LR = 0.5, 5, 1e-6
EARLY_STOPPING_PATIENCE = 10


class TrainingDivergedError(L2SError):
    """The loss stopped being finite; nothing of the epoch it happened in was saved."""


class _EpochTally:
    """Loss and accuracy over an epoch's batches, overall and per step index."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.bad_batches = 0   # batches whose maps held a non-finite value (validation: the data's fault)
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
        for loss_sum, per_step, bad in group.gather((self.loss_sum, dict(self.per_step), self.bad_batches)):
            merged.loss_sum += loss_sum
            merged.bad_batches += bad
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
                "per_step": {str(s): c / n for s, (c, n) in sorted(self.per_step.items())},
                "bad_batches": self.bad_batches}


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: str) -> dict:
    model.eval()
    tally = _EpochTally()
    for maps, steps, labels in loader:
        maps, steps, labels = maps.to(device), steps.to(device), labels.to(device)
        logits = model(maps, steps)
        tally.add(nn.functional.cross_entropy(logits, labels, reduction="sum").item(), logits, labels, steps)
        tally.bad_batches += int(not torch.isfinite(maps).all())
    return tally.merged(world()).summary()


@dataclass
class _Training:
    """What an epoch changes: the model, optimizer, scheduler, shuffling generator and counters."""

    model: RelationClassifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator
    counters: dict
    ddp: DistributedDataParallel | None = field(default=None, repr=False)

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
        spare = lambda: stand_in(train_loader.dataset)  # noqa: E731
        for number, batch in enumerate(train_loader):
            if group.spread:
                self._shared_step(batch, global_batch_size(number, size, total), tally, device, group, spare)
            else:
                self._step(batch, tally, device)
        train = tally.merged(group).summary()
        val = _evaluate(model, val_loader, device)
        if not math.isfinite(val["loss"]):
            self._diverged("validation", val["loss"], val.get("bad_batches", 0) > 0)
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
            self._diverged("training", loss.item(), not torch.isfinite(maps).all())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        tally.add(loss.item() * len(labels), logits, labels, steps)

    def _shared_step(self, batch: list[torch.Tensor] | None, batch_total: int, tally: _EpochTally, device: str,
                     group: World, spare: Callable[[], list[torch.Tensor]]) -> None:
        """This rank's slice of a global batch (``batch_total`` samples; None: an empty slice) through
        DDP, which averages the ranks' gradients: each rank's summed loss over ``batch_total``, times
        the ranks, so the common step is the global batch's mean loss. Every rank must take part in
        the average, so an empty slice runs ``spare()`` with weight 0."""
        self.optimizer.zero_grad(set_to_none=True)
        weight = group.size / batch_total
        if batch is None:
            batch, weight = spare(), 0.0
        maps, steps, labels = (t.to(device) for t in batch)
        logits = self._parallel(device, spare)(maps, steps)
        loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
        (loss_sum * weight).backward()
        # summed over the ranks: the loss, and how many slices held non-finite maps (so that every
        # rank, not only the one whose slice held them, blames the data rather than the learning rate)
        summed = torch.zeros(2, device=device)
        if weight:
            tally.add(loss_sum.item(), logits, labels, steps)
            summed[0] += loss_sum.detach()
            summed[1] += (~torch.isfinite(maps).all()).float()
        group.sum_([summed])
        if not torch.isfinite(summed[0]):
            self._diverged("training", summed[0].item() / batch_total, bool(summed[1]))
        self.optimizer.step()

    def _parallel(self, device: str, spare: Callable[[], list[torch.Tensor]]) -> DistributedDataParallel:
        """The model under DDP, built on first use, its gradient buckets settled (:meth:`_settle_buckets`)."""
        if self.ddp is None:
            index = torch.device(device).index if device.startswith("cuda") else None
            # the model's buffers are fixed tables (positional encodings): nothing to re-send each step
            self.ddp = DistributedDataParallel(self.model, device_ids=None if index is None else [index],
                                               broadcast_buffers=False)
            self._settle_buckets(device, spare)
        return self.ddp

    def _settle_buckets(self, device: str, spare: Callable[[], list[torch.Tensor]]) -> None:
        """DDP lays its gradient buckets out anew after its first backward, and a sum over 3+ ranks
        rounds by the layout: one backward of weight 0 before any step (eval mode: no dropout draw)
        makes a run resumed at any epoch sum exactly as the uninterrupted run."""
        training = self.model.training
        self.model.eval()
        maps, steps, _ = (t.to(device) for t in spare())
        (self.ddp(maps, steps).sum() * 0.0).backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train(training)

    def _diverged(self, which: str, loss: float, bad_maps: bool) -> None:
        """Stop at once: say in which epoch, and whether the data (``bad_maps``: the batch held
        non-finite maps) or the learning rate is to blame."""
        epoch = self.counters["epoch"] + 1
        if bad_maps:
            raise TrainingDivergedError(f"epoch {epoch}: the dataset holds non-finite maps (the {which} loss "
                                        f"is {loss}); remake the dataset")
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDivergedError(f"training diverged in epoch {epoch}: the {which} loss is {loss} at "
                                    f"learning rate {lr:g}; nothing of epoch {epoch} was saved; lower the "
                                    f"learning rate (--lr) and start over (--restart)")
