"""Training a SpatialScore on preference pairs, resumable epoch by epoch.

    out/
      best/       the reward model with the best validation accuracy (SpatialScorer.save_pretrained)
      last/       the latest epoch's model + state.pt (optimizer, schedule, RNG, counters) to resume
      log.jsonl   one line per epoch: loss, train / validation pairwise accuracy, seconds
      results.json  the best model's accuracy on the held-out pairs (written at the end)

Validation pairs are carved out of the training split by object set (``group`` of a record:
its ``objects`` field, else its prompt), so model selection never looks at the held-out split,
which is scored once, at the end. With ``mirror`` every flip pair also trains in the other
direction: under the perturbed prompt the loser is the image that should win.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from l2s.errors import L2SError, UsageError
from l2s.files import atomic_torch_save, atomic_write_text, output_lock
from l2s.run_folders import append_log, atomic_dir, prepare_out_dir, read_log, rewrite_log
from l2s.evaluation.curves import CURVES_FILE, save_curves

from .evaluate import evaluate_judge, pair_scores, accuracy
from .identity import MODEL_CARD
from .losses import pair_loss
from .model import SpatialScore, SpatialScoreConfig
from .pairs import PairSet, group_label, load_pairs
from .scorer import SpatialScorer, images_to_tensor
from .text import PromptBatch
from .settings import RewardTrainSettings

REWARD_PANELS = (("loss", ("loss",)), ("pairwise accuracy", ("train_accuracy", "val_accuracy")),
                 ("learning rate", ("lr",)))

STATE_FILE = "state.pt"


def group_of(record: dict) -> str:
    return record.get("objects") or record["prompt"]


def validation_split(pairs: PairSet, fraction: float, seed: int) -> tuple[PairSet, PairSet]:
    """(train, validation) by a salted hash of each record's group: whole groups on one side."""
    def held(record: dict) -> bool:
        digest = hashlib.sha1(f"{seed}|val|{group_of(record)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction

    flags = [held(r) for r in pairs.records]
    return (pairs.subset([i for i, f in enumerate(flags) if not f]),
            pairs.subset([i for i, f in enumerate(flags) if f]))


def check_prompts(scorer: SpatialScorer, sets: Sequence[PairSet]) -> None:
    """Read every prompt of ``sets``, and every perturbed one it trains on, as the model will
    (parse, tokenize)."""
    for pairs in sets:
        if len(pairs):
            scorer.prompt_batch(pairs.prompts + [r["perturbed"] for r in pairs.mirrorable().records])


class _Examples:
    """Training examples (pair, direction) as tensors: images stay uint8 until a batch is drawn."""

    def __init__(self, pairs: PairSet, scorer: SpatialScorer, mirror: bool) -> None:
        self.images = pairs.images
        self.winner, self.loser, self.prompts = pairs.winner, pairs.loser, scorer.prompt_batch(pairs.prompts)
        if scorer.model.config.design == "relational":
            unread = [p for p, n in zip(pairs.prompts, (self.prompts.relations >= 0).sum(1).tolist()) if n == 0]
            if unread:
                raise L2SError(f"{len(unread)} training prompts have no left/right/above/below clause the relational "
                               f"design reads (they would all score 0), e.g. {unread[0]!r}")
        if mirror:   # flip pairs only: a dropped- or duplicated-object loser shows no prompt of its pair
            back = pairs.mirrorable()
            flipped = scorer.prompt_batch([r["perturbed"] for r in back.records])
            self.winner, self.loser = torch.cat([pairs.winner, back.loser]), torch.cat([pairs.loser, back.winner])
            self.prompts = PromptBatch.cat([self.prompts, flipped])

    def __len__(self) -> int:
        return int(self.winner.numel())

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, PromptBatch]:
        return (images_to_tensor(self.images[self.winner[index]]).to(device),
                images_to_tensor(self.images[self.loser[index]]).to(device), self.prompts[index].to(device))


def _schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _validation_accuracy(scorer: SpatialScorer, pairs: PairSet) -> float | None:
    if len(pairs) == 0:
        return None
    scorer.model.eval()
    result = accuracy(*pair_scores(scorer, pairs))["accuracy"]
    scorer.model.train()
    return result


def _save(directory: Path, scorer: SpatialScorer, state: dict | None = None) -> None:
    def write(tmp: Path) -> None:
        scorer.save_pretrained(tmp)
        if state is not None:
            atomic_torch_save(state, tmp / STATE_FILE)   # a full disk: an OSError naming the file

    atomic_dir(directory, write)


def train_reward_model(data: str | Path | Sequence[str | Path], out: str | Path, tokenizer,
                       settings: RewardTrainSettings | None = None, *,
                       device: str = "cpu", resume: bool = True, progress: bool = True,
                       command: str | None = None, stop_after: int | None = None,
                       on_resume: Callable[[str], None] | None = None) -> dict:
    """Train a :class:`~l2s.reward.SpatialScore` on the pair folder ``data`` into ``out``.

    ``tokenizer``: a ``transformers`` tokenizer for the prompts (saved with the model). Resumes
    from ``out/last`` unless ``resume`` is False; ``stop_after``: end after that many epochs of
    this call (the same command continues). Returns the results (also ``out/results.json``
    once every epoch has run) and ``epochs_before``, the epochs an earlier call had run.
    ``on_resume(line)`` hears, before the first epoch, that a run resumes an earlier one.
    """
    settings = settings or RewardTrainSettings()
    settings.check()
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0):
        raise UsageError(f"stop_after must be a whole number of epochs >= 0 (0: prepare only), got {stop_after!r}")
    out = Path(out)
    with output_lock(out, "reward-model folder", kind="train-reward"):
        train_pairs, val_pairs = validation_split(load_pairs(data, "train"), settings.val_fraction, settings.seed)
        if len(train_pairs) == 0:
            raise L2SError(f"{data} has no training pairs")
        config = SpatialScoreConfig.from_dict({"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                                               "image_size": int(train_pairs.images.shape[1]), **settings.model})
        folders = [data] if isinstance(data, (str, Path)) else list(data)
        record = {**asdict(settings), "data": [str(Path(f).resolve()) for f in folders] if len(folders) > 1
                  else str(Path(folders[0]).resolve()), "train_pairs": len(train_pairs),
                  "pairs_digest": train_pairs.digest()}
        torch.manual_seed(settings.seed)   # the initial weights (a resumed run loads its own)
        scorer = SpatialScorer(SpatialScore(config).to(device), tokenizer)
        # Every prompt read before the folder is touched: a bad one fails now, not after the epochs
        examples = _Examples(train_pairs, scorer, settings.mirror)
        heldout = load_pairs(data, "heldout")   # read once: checked now, scored at the end
        check_prompts(scorer, [val_pairs, heldout])
        state = prepare_out_dir(out, record, resume, also=(CURVES_FILE,))   # a run started over draws its own
        run = _Run(scorer, settings, record, device)
        run.start(examples, state)
        before = run.epoch   # a finished run resumes at its end: it is only scored again
        if on_resume is not None and 0 < before < settings.epochs:
            on_resume(f"l2s: resumed after epoch {before} of the earlier run in {out}")
        if state is None:
            rewrite_log(out / "log.jsonl", [])
        run.epochs(out, val_pairs, progress, stop_after)
        if run.epoch < settings.epochs:
            return {"finished": False, "epochs_done": run.epoch, "epochs_before": before}
        return {**finish(out, heldout, command, record), "epochs_before": before}


def finish(out: Path, heldout: PairSet, command: str | None, record: dict) -> dict:
    """Score the best model on the held-out pairs; write ``results.json``."""
    from .scorer import load_reward_model

    best = load_reward_model(out / "best")
    log = read_log(out / "log.jsonl", fix="delete log.jsonl and rerun")
    results = {"finished": True, "command": command, "settings": record, "heldout_pairs": len(heldout),
               "best_epoch": _best_epoch(log),
               "heldout": evaluate_judge(best, heldout) if len(heldout) else None}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "best" / MODEL_CARD, model_card(results))
    return results


def model_card(results: dict) -> str:
    """``best/README.md``: what the model is, what made it, how well it judged held-out pairs, how to use it."""
    heldout = results["heldout"]
    if heldout:
        flips = ", ".join(f"{group_label(name)} {v['accuracy']:.3f} (n={v['n']})"
                          for name, v in heldout["prompt"]["flips"].items())
        scored = (f"Held-out pairwise accuracy {heldout['prompt']['all']['accuracy']:.3f} on "
                  f"{results['heldout_pairs']} pairs ({flips}).")
    else:
        scored = "No held-out pairs: not scored."
    made_by = f"    {results['command']}" if results.get("command") else "    (train_reward_model called from Python)"
    settings = json.dumps(results["settings"], indent=2)
    return (f"# SpatialScore reward model\n\nScores an image under a prompt (higher: the image shows the prompt's "
            f"spatial relations). The model of epoch {results['best_epoch']} (best validation accuracy), trained "
            f"by:\n\n{made_by}\n\n{scored}\n\nUse it with `l2s shapes grpo --reward DIR` or `l2s shapes bench "
            f"--reward-model DIR` (in Python: `l2s.reward.load_reward_model(DIR)`). Settings:\n\n"
            f"```json\n{settings}\n```\n")


def _best_epoch(log: list[dict]) -> int | None:
    """The epoch whose model ``best/`` holds: the first with the highest validation accuracy, or the
    last when there are no validation pairs (then every epoch replaces it)."""
    if not log:
        return None
    if all(r["val_accuracy"] is None for r in log):
        return log[-1]["epoch"]
    return max(log, key=lambda r: (r["val_accuracy"] or 0, -r["epoch"]))["epoch"]


class _Run:
    """The mutable part of one training run: model, optimiser, schedule, counters."""

    def __init__(self, scorer: SpatialScorer, settings: RewardTrainSettings, record: dict, device: str) -> None:
        self.scorer, self.settings, self.record, self.device = scorer, settings, record, device
        self.model = scorer.model.train()
        self.epoch, self.best = 0, -1.0

    def start(self, examples: _Examples, state: dict | None) -> None:
        s = self.settings
        self.examples = examples
        self.steps_per_epoch = max(1, math.ceil(len(examples) / s.batch_size))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.schedule = _schedule(self.optimizer, s.warmup_steps, s.epochs * self.steps_per_epoch)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(json.loads(state["schedule"]))
            counters = json.loads(state["counters"])
            self.epoch, self.best = counters["epoch"], counters["best"]

    def epochs(self, out: Path, val_pairs: PairSet, progress: bool, stop_after: int | None) -> None:
        s, ran = self.settings, 0
        # read once: each epoch's row is kept here as it is appended, so curves.png costs no re-read
        history = read_log(out / "log.jsonl", fix="delete log.jsonl and rerun")
        bar = tqdm(total=s.epochs * self.steps_per_epoch, initial=self.epoch * self.steps_per_epoch,
                   desc="l2s train-reward", unit="step", disable=not progress)
        try:
            while self.epoch < s.epochs and (stop_after is None or ran < stop_after):
                row = self.one_epoch(bar)
                row["val_accuracy"] = _validation_accuracy(self.scorer, val_pairs)
                self.epoch += 1
                ran += 1
                row["epoch"] = self.epoch
                if row["val_accuracy"] is None or row["val_accuracy"] > self.best:
                    self.best = row["val_accuracy"] if row["val_accuracy"] is not None else self.best
                    _save(out / "best", self.scorer)
                _save(out / "last", self.scorer, self.state())
                append_log(out / "log.jsonl", row)
                history.append(row)
                save_curves(out, history, REWARD_PANELS, f"reward model: {out}")
                shown = {"loss": f"{row['loss']:.3f}"}
                if row["val_accuracy"] is not None:     # no validation pairs: nothing to show
                    shown["val"] = f"{row['val_accuracy']:.3f}"
                bar.set_postfix(shown, refresh=False)
        finally:
            bar.close()

    def one_epoch(self, bar) -> dict:
        s, started = self.settings, time.perf_counter()
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(s.seed * 1000 + self.epoch))
        total, right, seen = 0.0, 0, 0
        for start in range(0, len(order), s.batch_size):
            index = order[start:start + s.batch_size]
            images_w, images_l, prompts = self.examples.batch(index, self.device)
            text = self.model.encode_text(prompts)
            winner, loser = self.model(images_w, prompts, text=text), self.model(images_l, prompts, text=text)
            loss = pair_loss(s.loss, winner, loser)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            total += float(loss.detach()) * len(index)
            right += int((winner[0] > loser[0]).sum())
            seen += len(index)
            bar.update()
        return {"loss": total / seen, "train_accuracy": right / seen, "lr": self.schedule.get_last_lr()[0],
                "seconds": round(time.perf_counter() - started, 1)}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": json.dumps(self.schedule.state_dict()),
                "counters": json.dumps({"epoch": self.epoch, "best": self.best}),
                "settings": json.dumps(self.record)}
