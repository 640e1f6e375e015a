"""Train the relation classifier on a map dataset (SPEC §3 "Training", reference note §4).

Published recipe: AdamW (weight decay 0.05), lr 5e-5 (FLUX) / 1e-4 (SD), batch 64,
ReduceLROnPlateau on the validation loss (factor 0.5, patience 5, min lr 1e-6), at most 200 (FLUX) /
150 (SD1.4) / 100 (SD2.1) epochs, early stopping after 10 epochs without a better validation loss,
cross-entropy. Samples are filtered to the classifier's trained step indices.

Two deliberate differences from the published trainer: the checkpoint kept as ``best/`` is the one
with the best validation loss (published: last-epoch weights), and the validation loss is the mean
over samples (published: mean of per-batch means).

Output directory::

    out_dir/
      best/   model.safetensors + config.json (RelationClassifier.save) + training.json
      last/   the same for the latest epoch + state.pt (optimizer, scheduler, RNG, counters) to resume
      log.jsonl   one line per epoch: loss / accuracy, train and val, overall and per step index

Resuming (``resume=True``, the default) continues from ``last/`` and gives exactly the weights an
uninterrupted run would have: the shuffling generator, the global RNG (dropout) and every
optimizer / scheduler / early-stopping counter are restored.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from l2s.classifier import ClassifierConfig, RelationClassifier, preset
from .dataset import AttentionMapDataset, load_dataset_meta
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.evaluation import PairedComparison, paired_comparison

log = logging.getLogger(__name__)

LOG_FILE, STATE_FILE, TRAINING_FILE = "log.jsonl", "state.pt", "training.json"
BEST_DIR, LAST_DIR = "best", "last"
WEIGHT_DECAY = 0.05
LR_FACTOR, LR_PATIENCE, MIN_LR = 0.5, 5, 1e-6
EARLY_STOPPING_PATIENCE = 10
VAL_BATCH_SIZE = 256
# Published per-family learning rates and epoch limits.
_DEFAULT_LR = {"flux-dev": 5e-5, "flux-schnell": 5e-5, "sd14": 1e-4, "sd21": 1e-4}
_DEFAULT_EPOCHS = {"flux-dev": 200, "flux-schnell": 200, "sd14": 150, "sd21": 100}


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


def _resolve_config(config: ClassifierConfig | str, meta: dict) -> ClassifierConfig:
    """The classifier config, checked against (or, for a preset name, completed from) the dataset."""
    if isinstance(config, str):
        overrides = dict(class_names=tuple(meta["class_names"]), map_size=meta["map_size"])
        if meta.get("orig_map_size"):
            overrides["orig_map_size"] = meta["orig_map_size"]
        if meta.get("layer_layout"):
            overrides["layer_layout"] = meta["layer_layout"]
        config = preset(config, channels=meta["channels"], **overrides)
    if config.channels != meta["channels"]:
        raise ClassifierMismatchError(f"the classifier takes {config.channels} maps per object but the dataset "
                                      f"has {meta['channels']}")
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
    return config.model_family if config.model_family in _DEFAULT_LR else "sd14"


def _atomic_dir(target: Path, write) -> None:
    """Fill ``target`` via ``write(tmp_dir)`` so a crash never leaves a half-written checkpoint."""
    tmp, old = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _recover_dir(target: Path) -> None:
    """Undo a checkpoint swap that a crash interrupted (``target`` moved away, new one not in)."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)
    shutil.rmtree(target.with_name(target.name + ".new"), ignore_errors=True)


def _save_checkpoint(directory: Path, model: RelationClassifier, training: dict, state: dict | None = None) -> None:
    def write(tmp: Path) -> None:
        model.save(tmp)
        # ClassifierConfig has no field for the training settings: they live beside config.json.
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / STATE_FILE)

    _atomic_dir(directory, write)


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
    return tally.summary()


def _record_key(row: dict) -> str:
    return f"{row['shard']}:{row['key']}"


def _image_step_key(row: dict) -> str:
    """The source image and step index of a record: a "pos" and a "neg" record share it (the same
    image inverted with the true and with a wrong relation word)."""
    return f"{row.get('sample_key', row['sample_id'])}@{row['timestep']}"


@torch.no_grad()
def record_hits(model: RelationClassifier, dataset_dir: str | Path, split: str | None = "val",
                device: str = "cpu", batch_size: int = VAL_BATCH_SIZE) -> dict[str, dict[str, bool]]:
    """Whether ``model`` classifies each record of a dataset split right, grouped by prompt type
    (``"pos"``: the prompt had the true relation word, ``"neg"``: a wrong one). Records are keyed
    by shard and key, so the hits of two classifiers on the same dataset pair up."""
    dataset = AttentionMapDataset(dataset_dir, split, model.config.timesteps, None, model.config.class_names)
    model = model.to(device).eval()
    hits: dict[str, dict[str, bool]] = defaultdict(dict)
    rows = iter(dataset.records)  # the loader keeps the dataset's order
    for maps, steps, labels in DataLoader(dataset, batch_size=batch_size):
        right = (model(maps.to(device), steps.to(device)).argmax(dim=1).cpu() == labels).tolist()
        for hit, row in zip(right, rows):  # hits first: zip must not pull a row past the batch
            hits[row["prompt_type"]][_record_key(row)] = hit
    return dict(hits)


def relation_leakage(model: RelationClassifier, dataset_dir: str | Path, split: str | None = "val",
                     device: str = "cpu") -> dict[str, PairedComparison]:
    """How much ``model`` reads the relation word instead of the layout: its hits on an image's maps
    inverted with the true word (``a``, "pos") against the same image's maps inverted with a wrong
    word (``b``, "neg"), paired by image and step index. Keys: ``"all"`` and each step index (as a
    string). A classifier that ignores the word scores both alike; one that reads it is right more
    often with the true word. Empty when the split has no "neg" records."""
    return leakage_from_hits(record_hits(model, dataset_dir, split, device), dataset_dir, split)


def leakage_from_hits(hits: dict[str, dict[str, bool]], dataset_dir: str | Path,
                      split: str | None = "val") -> dict[str, PairedComparison]:
    """:func:`relation_leakage` from hits :func:`record_hits` already made (default keys) on that
    dataset split: records are re-keyed by image and step from the manifest, no inference."""
    image_step = {_record_key(row): _image_step_key(row) for row in AttentionMapDataset(dataset_dir, split).records}
    pos, neg = ({image_step[k]: hit for k, hit in hits.get(kind, {}).items()} for kind in ("pos", "neg"))
    if not pos or not neg:
        return {}
    steps = sorted({k.rsplit("@", 1)[1] for k in pos}, key=int)
    by_step = {step: paired_comparison({k: v for k, v in pos.items() if k.endswith(f"@{step}")}, neg)
               for step in steps}
    return {"all": paired_comparison(pos, neg), **by_step}


def leakage_gap(c: PairedComparison) -> str:
    """One leakage figure: accuracy with the true word minus with a wrong one, and its sign test."""
    return f"{(c.a_correct - c.b_correct) / c.n_pairs:+.3f} (p = {c.p_value:.2g})"


def leakage_by_step(leakage: dict[str, PairedComparison]) -> str:
    """``"1 +0.020 (p = 0.035), 3 ..."``: :func:`leakage_gap` per step index."""
    return ", ".join(f"{step} {leakage_gap(c)}" for step, c in leakage.items() if step != "all")


def leakage_line(leakage: dict[str, PairedComparison]) -> str:
    """One line of :func:`relation_leakage`: accuracy with the true word minus with a wrong one."""
    if not leakage:
        return "relation leakage: no wrong-word (neg) records to measure it on"
    overall = leakage["all"]
    return (f"relation leakage (val accuracy with the true word minus a wrong one, same images): "
            f"{leakage_gap(overall)}, right only with the true word {overall.a_only}, only with a wrong one "
            f"{overall.b_only}; by step index: {leakage_by_step(leakage)}")


def compare_classifiers(a: RelationClassifier, b: RelationClassifier, dataset_dir: str | Path,
                        split: str | None = "val", device: str = "cpu") -> dict[str, PairedComparison]:
    """``a`` against ``b`` on the same held-out maps, per prompt type. The leakage check: a classifier
    trained without wrong-word inversions loses accuracy on ``"neg"`` maps, whose prompt names
    another relation than the one drawn."""
    return compare_hits(record_hits(a, dataset_dir, split, device), record_hits(b, dataset_dir, split, device))


def compare_hits(hits_a: dict[str, dict[str, bool]], hits_b: dict[str, dict[str, bool]]) -> dict[str, PairedComparison]:
    """:func:`compare_classifiers` from hits :func:`record_hits` already made."""
    return {kind: paired_comparison(hits_a[kind], hits_b.get(kind, {})) for kind in sorted(hits_a)}


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
) -> TrainResult:
    """Train a :class:`RelationClassifier` on the ``train`` split, validating on ``val``.

    Args:
        dataset_dir: a map dataset (:func:`l2s.training.dataset.make_dataset`).
        out_dir: where ``best/``, ``last/`` and ``log.jsonl`` go.
        config: a :class:`ClassifierConfig` (must fit the dataset's channels and map size) or a
            preset name ("flux-dev", "flux-schnell", "sd14", "sd21") completed from the dataset.
        epochs: the total epoch limit (default 200 FLUX / 150 SD1.4 / 100 SD2.1); a resumed run
            continues up to this many epochs in total.
        batch_size: training batch (published 64; validation uses 256).
        lr: AdamW learning rate (default 5e-5 FLUX / 1e-4 SD; a "custom" family gets the SD defaults).
        seed: seeds the initial weights, shuffling and dropout.
        device: torch device.
        resume: continue from ``out_dir/last`` when it exists (else start over).
        prompt_types: train only on these prompt types (e.g. ``("pos",)``: the leakage ablation).
        num_workers: DataLoader workers.
        progress: show a tqdm bar over epochs.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    meta = load_dataset_meta(dataset_dir)
    config = _resolve_config(config, meta)
    family = _family(config)
    lr = float(lr if lr is not None else _DEFAULT_LR[family])
    max_epochs = int(epochs if epochs is not None else _DEFAULT_EPOCHS[family])
    if batch_size < 1 or max_epochs < 1:
        raise L2SError("batch_size and epochs must be positive")

    train_set = AttentionMapDataset(dataset_dir, "train", config.timesteps, prompt_types, config.class_names)
    val_set = AttentionMapDataset(dataset_dir, "val", config.timesteps, prompt_types, config.class_names)
    if len(train_set) == 0:
        raise L2SError(f"no training samples in {dataset_dir} at step indices {list(config.timesteps)}")
    if len(val_set) == 0:
        raise L2SError(f"no validation samples in {dataset_dir} at step indices {list(config.timesteps)}")

    settings = _training_settings(config, meta, lr, batch_size, seed, prompt_types)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_dir, last_dir, log_path = out_dir / BEST_DIR, out_dir / LAST_DIR, out_dir / LOG_FILE
    for directory in (best_dir, last_dir):
        _recover_dir(directory)
    state = None
    if resume and (last_dir / STATE_FILE).is_file():
        state = torch.load(last_dir / STATE_FILE, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
        if saved != json.loads(json.dumps(settings)):
            differing = sorted(k for k in settings if saved.get(k) != json.loads(json.dumps(settings)).get(k))
            raise L2SError(f"{out_dir} holds a run with other settings ({', '.join(differing)}); "
                           f"pass resume=False / --no-resume to start over, or use another output directory")
    elif not resume:
        for stale in (best_dir, last_dir):
            shutil.rmtree(stale, ignore_errors=True)
        log_path.unlink(missing_ok=True)

    # fork_rng: training uses the global RNG (dropout) without disturbing the caller's stream.
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = RelationClassifier(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=LR_FACTOR,
                                                               patience=LR_PATIENCE, min_lr=MIN_LR, threshold=0.0)
        shuffle = torch.Generator().manual_seed(seed)
        counters = {"epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "best_val_accuracy": 0.0,
                    "bad_epochs": 0, "stopped_early": False}
        if state is not None:
            model.load_state_dict(RelationClassifier.load(last_dir).state_dict())
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(json.loads(state["scheduler"]))
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["cpu_rng"])
            if devices and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], devices[0])
            counters.update(json.loads(state["counters"]))
        history = [row for row in _read_log(log_path) if row["epoch"] <= counters["epoch"]]
        _rewrite_log(log_path, history)  # drop lines of an epoch whose state never got saved

        train_loader = DataLoader(train_set, batch_size=batch_size, sampler=RandomSampler(train_set, generator=shuffle),
                                  num_workers=num_workers)
        val_loader = DataLoader(val_set, batch_size=VAL_BATCH_SIZE, shuffle=False, num_workers=num_workers)
        loss_fn = nn.CrossEntropyLoss()
        bar = tqdm(total=max_epochs, initial=min(counters["epoch"], max_epochs), disable=not progress,
                   desc="l2s train", unit="epoch")
        with bar:
            while counters["epoch"] < max_epochs and not counters["stopped_early"]:
                started = time.perf_counter()
                model.train()
                tally = _EpochTally()
                for maps, steps, labels in train_loader:
                    maps, steps, labels = maps.to(device), steps.to(device), labels.to(device)
                    logits = model(maps, steps)
                    loss = loss_fn(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    tally.add(loss.item() * len(labels), logits, labels, steps)
                train = tally.summary()
                val = _evaluate(model, val_loader, device)
                scheduler.step(val["loss"])
                counters["epoch"] += 1
                improved = val["loss"] < counters["best_val_loss"]
                if improved:
                    counters.update(best_epoch=counters["epoch"], best_val_loss=val["loss"],
                                    best_val_accuracy=val["accuracy"], bad_epochs=0)
                else:
                    counters["bad_epochs"] += 1
                    counters["stopped_early"] = counters["bad_epochs"] >= EARLY_STOPPING_PATIENCE
                row = {"epoch": counters["epoch"], "lr": optimizer.param_groups[0]["lr"],
                       "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                       "train_accuracy_per_step": train["per_step"],
                       "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                       "val_accuracy_per_step": val["per_step"], "best": improved,
                       "seconds": round(time.perf_counter() - started, 3)}
                history.append(row)
                training = {**settings, "dataset": str(dataset_dir.resolve()), "epoch": counters["epoch"],
                            "max_epochs": max_epochs, "best_epoch": counters["best_epoch"],
                            "best_val_loss": counters["best_val_loss"],
                            "best_val_accuracy": counters["best_val_accuracy"],
                            "train_samples": len(train_set), "val_samples": len(val_set)}
                if improved:
                    _save_checkpoint(best_dir, model, training)
                _append_log(log_path, row)
                _save_checkpoint(last_dir, model, training, _resume_state(
                    optimizer, scheduler, shuffle, counters, settings, devices))
                bar.set_postfix(train_acc=f"{row['train_accuracy']:.3f}", val_acc=f"{val['accuracy']:.3f}",
                                val_loss=f"{val['loss']:.4f}")
                bar.update()
    return TrainResult(out_dir, best_dir, last_dir, counters["best_epoch"], counters["best_val_loss"],
                       counters["best_val_accuracy"], counters["epoch"], counters["stopped_early"], history)


def _resume_state(optimizer, scheduler, shuffle: torch.Generator, counters: dict, settings: dict,
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


def _read_log(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _rewrite_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------
# CLI: l2s train
# --------------------------------------------------------------------------------------------


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="l2s train",
        description="Train the relation classifier on a map dataset made by 'l2s make-data'. Writes the best-"
                    "validation checkpoint to OUT/best (load it with --classifier OUT/best), the latest epoch to "
                    "OUT/last (rerunning the same command resumes from it) and per-epoch metrics to OUT/log.jsonl.")
    p.add_argument("dataset", metavar="DATASET", help="dataset directory written by 'l2s make-data'")
    p.add_argument("--out", required=True, help="output directory for checkpoints and the log")
    p.add_argument("--preset", default=None,
                   help="classifier preset: flux-dev, flux-schnell, sd14 or sd21 (default: the dataset's model "
                        "family); channels, classes and map size come from the dataset")
    p.add_argument("--epochs", type=int, help="total epoch limit (default: 200 FLUX, 150 SD1.4, 100 SD2.1)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-5 FLUX, 1e-4 SD)")
    p.add_argument("--seed", type=int, default=0, help="seeds initial weights, shuffling and dropout")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only-pos", action="store_true",
                   help="train on correct-relation prompts only (leakage ablation; not recommended)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last exists")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``l2s train``: returns the exit code (2 with one error line for bad input)."""
    args = build_train_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="l2s: %(message)s")
    try:
        meta = load_dataset_meta(args.dataset)
        name = args.preset or meta.get("model_family")
        if name not in _DEFAULT_LR:
            raise L2SError(f"choose a classifier --preset (flux-dev, flux-schnell, sd14, sd21); the dataset's "
                           f"model family is {meta.get('model_family')!r}")
        result = train_classifier(args.dataset, args.out, name, epochs=args.epochs, batch_size=args.batch_size,
                                  lr=args.lr, seed=args.seed, device=args.device, resume=not args.no_resume,
                                  prompt_types=("pos",) if args.only_pos else None, num_workers=args.workers,
                                  progress=not args.quiet)
    except (L2SError, ValueError) as error:
        print(f"l2s: error: {error}", file=sys.stderr)
        return 2
    print(f"l2s: best epoch {result.best_epoch}: val loss {result.best_val_loss:.4f}, val accuracy "
          f"{result.best_val_accuracy:.3f} ({result.epochs_run} epochs"
          f"{', stopped early' if result.stopped_early else ''}); checkpoint {result.best_dir}", file=sys.stderr)
    for line in validation_report(result.best_dir, args.dataset, args.device):
        print(f"l2s: {line}", file=sys.stderr)
    return 0


def validation_report(checkpoint: str | Path, dataset_dir: str | Path, device: str = "cpu") -> list[str]:
    """A checkpoint's validation accuracy per prompt type, on every validation record (also the
    types it did not train on), and its relation leakage (:func:`relation_leakage`), a line each: a
    classifier that reads the relation word back out of the maps loses accuracy on "neg" maps
    (wrong word in the prompt)."""
    model = RelationClassifier.load(checkpoint)
    hits = record_hits(model, dataset_dir, "val", device)
    by_type = ", ".join(f"{kind} {sum(h.values()) / len(h):.3f} ({len(h)})" for kind, h in sorted(hits.items()))
    return [f"val accuracy by prompt type: {by_type or 'no records'}",
            leakage_line(leakage_from_hits(hits, dataset_dir, "val"))]
