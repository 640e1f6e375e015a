"""A GRPO run: epochs, evaluation, checkpoints, the training log and the saved adapters.

``train_grpo`` writes into ``out``: ``checkpoint.pt`` after every epoch (adapter, optimiser, EMA,
RNG, epoch), ``log.jsonl`` (one line per epoch: rewards, KL, ratios, held-out accuracy and
reward-model score of the EMA weights, wall and CPU seconds), ``adapter/`` (EMA weights, what evaluation and
``--lora`` use) and ``adapter_raw/`` (the live weights), both peft folders, and ``grpo.json``; with
``keep_evaluated``, ``evaluated/epoch-NNNN/`` holds the EMA adapter of every judged epoch too.
Rerunning the same call resumes after the last finished epoch. In a data-parallel run only the
main process writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from l2s.errors import L2SError, UsageError
from l2s.files import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    changed_settings,
    described_changes,
    follow_umask,
    fsync_append,
    output_lock,
    read_jsonl_lines,
    read_state_json,
    remove_outputs,
)
from l2s.values import positive_int
from l2s.reward.identity import same_reward
from l2s.evaluation.curves import CURVES_FILE, save_curves

from .settings import GRPOSettings
from .trainer import GRPOTrainer, seeds_for

CHECKPOINT, LOG, EVALUATED = "checkpoint.pt", "log.jsonl", "evaluated"
# A held-out judge this far below its epoch-0 value while the reward is above its own: said once a
# run, since a reward model with a blind spot rises exactly as the images lose what it cannot see.
HACKING_DROP = 0.2
log = logging.getLogger(__name__)


@dataclass
class GRPOResult:
    """What a call of :func:`train_grpo` leaves: epochs finished and the log's records."""

    epochs_done: int
    records: list[dict]
    out: Path
    epochs_before: int = 0      # finished by an earlier call (a resume)


def epoch_prompts(pool: list[str], settings: GRPOSettings, epoch: int, rank: int, world: int) -> list[str]:
    """This process's share of the epoch's prompts, drawn without replacement from ``pool``."""
    if len(pool) < settings.prompts_per_epoch:
        raise L2SError(f"{len(pool)} training prompts; an epoch needs {settings.prompts_per_epoch}")
    order = np.random.default_rng([settings.seed, epoch]).permutation(len(pool))[:settings.prompts_per_epoch]
    share = settings.prompts_per_epoch // world
    return [pool[i] for i in order[rank * share:(rank + 1) * share]]


def run_epoch(trainer: GRPOTrainer, pool: list[str], epoch: int, progress: bool) -> dict:
    """Sample, score and train one epoch on this process; returns the epoch's (all-process) stats."""
    from tqdm.auto import tqdm

    s, acc = trainer.settings, trainer.acc
    prompts = epoch_prompts(pool, s, epoch, acc.process_index, acc.num_processes)
    seeds = seeds_for(s.seed, epoch, acc.process_index, count=len(prompts) * s.group_size)
    started, cpu_started = time.perf_counter(), time.process_time()
    chunks = -(-len(seeds) // s.chunk)
    with tqdm(total=chunks * s.steps, desc=f"epoch {epoch} sampling", unit="step", leave=False,
              disable=not progress) as bar:
        rollout, cond = trainer.rollout(prompts, seeds, s.noise_level, bar)
    rewards = trainer.score(trainer.reward, rollout, prompts).reshape(len(prompts), s.group_size)
    advantages, keep = trainer.advantages(rewards)
    sampled = time.perf_counter()
    generator = torch.Generator().manual_seed(seeds_for(s.seed, epoch, acc.process_index, 1, count=1)[0])
    rows = int((advantages != 0).sum())
    with tqdm(total=rows * s.trained_steps, desc=f"epoch {epoch} training", leave=False,
              disable=not progress) as bar:
        stats = trainer.train(rollout, advantages, cond, generator, bar)
    # collectives on the accelerator's device: NCCL (multi-GPU) has no CPU tensors
    all_rewards = acc.gather(rewards.to(acc.device))
    flat_groups = acc.gather((rewards.max(dim=1).values == rewards.min(dim=1).values).float().to(acc.device))
    # CPU seconds of every process (all threads): the training cost a comparison with steering reads
    cpu = float(acc.reduce(torch.tensor(time.process_time() - cpu_started, dtype=torch.float64, device=acc.device),
                           reduction="sum"))
    return {"epoch": epoch, "reward_mean": float(all_rewards.mean()), "reward_std": float(all_rewards.std()),
            "groups_without_spread": int(flat_groups.sum()), "kept_fraction": float(keep.float().mean()),
            **stats, "trained_rows": int(acc.reduce(torch.tensor(stats["trained_rows"], device=acc.device),
                                                  reduction="sum")),
            "optimizer_steps": trainer.optimizer_steps, "sampling_s": round(sampled - started, 2),
            "training_s": round(time.perf_counter() - sampled, 2), "cpu_s": round(cpu, 2)}


# The log columns evaluate() writes itself, beside eval_<evaluator name>.
EVAL_KEYS = frozenset({"reward", "images", "s"})


def evaluate(trainer: GRPOTrainer, prompts: list[str], evaluators: dict, reward, progress: bool = False,
             label: str = "dev") -> dict:
    """Deterministic (ODE) images of the EMA weights at the settings' eval seeds: each evaluator's
    mean (``eval_<name>``: held-out accuracies) and the training reward's (``eval_reward``)."""
    from tqdm.auto import tqdm

    started, s = time.perf_counter(), trainer.settings
    seeds = [seed for _ in prompts for seed in s.eval_seeds]
    total = -(-len(seeds) // s.chunk) * s.steps   # the bar counts sampler steps of chunks, not images
    desc = f"{label}: sampling {len(seeds)} image{'s' * (len(seeds) != 1)}"
    with trainer.ema.applied(), tqdm(total=total, desc=desc, unit="step", leave=False, disable=not progress) as bar:
        rollout, _ = trainer.rollout(prompts, seeds, 0.0, bar)
    result = {f"eval_{name}": float(trainer.score(fn, rollout, prompts).mean()) for name, fn in evaluators.items()}
    result["eval_reward"] = float(trainer.score(reward, rollout, prompts).mean())
    return {**result, "eval_images": len(seeds), "eval_s": round(time.perf_counter() - started, 2)}


def train_grpo(pipe, reward, settings: GRPOSettings, out: str | Path, train_prompts: list[str], *,
               eval_prompts: list[str] | None = None, evaluators: dict | None = None, resume: bool = True,
               progress: bool = True, command: str | None = None, accelerator=None,
               stop_after: int | None = None, eval_every: int = 1, reward_name: str | None = None,
               keep_evaluated: bool = False, base_model: str | None = None,
               named_rewards: dict[str, str | Path] | None = None) -> GRPOResult:
    """GRPO-train a LoRA adapter on ``pipe`` (any diffusers FluxPipeline) for ``reward`` (any
    callable ``reward(images, prompts) -> (B,) tensor``, higher is better).

    ``train_prompts``: the pool each epoch draws from; ``eval_prompts`` + ``evaluators`` (name ->
    callable like ``reward``, e.g. exact 0/1 judges): held-out accuracies logged before training
    (epoch 0) and after every ``eval_every``-th epoch and the last one (evaluation does not change
    training: a run resumed with another cadence trains the same). ``stop_after``: end this call after that many
    epochs, as an interruption would (a later call resumes). ``reward_name``: what ``reward`` is, kept
    in grpo.json: resuming with another is refused (a run must not mix rewards; ``named_rewards``:
    named rewards' folders, one reward with their names: :func:`l2s.reward.identity.same_reward`);
    ``base_model``: what ``pipe`` is (e.g. its weights digest), kept and checked the same way. ``keep_evaluated``:
    keep each judged epoch's EMA adapter, so that any of them can be benched later (``adapter/`` is
    only the latest). ``accelerator``: an
    :class:`accelerate.Accelerator` (default: one for this machine; under ``accelerate launch``
    every process runs this function and they split each epoch's prompts).
    """
    from accelerate import Accelerator

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    settings.check(acc.num_processes)
    positive_int(eval_every, "eval_every")
    clashing = sorted(set(evaluators or {}) & EVAL_KEYS)
    if clashing:   # eval_<name> would overwrite the log's own column
        raise UsageError(f"evaluator name {clashing[0]!r} is taken by the log's eval_{clashing[0]} column; "
                         f"name it otherwise (taken: {', '.join(sorted(EVAL_KEYS))})")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0):
        raise UsageError(f"stop_after must be a whole number of epochs >= 0 (0: prepare only), got {stop_after!r}")
    out = Path(out)
    # Rank 0 alone holds the lock; when it refuses, the launcher ends the other ranks.
    lock = output_lock(out, kind="grpo") if acc.is_main_process else contextlib.nullcontext()
    with lock:
        trainer = GRPOTrainer(pipe, reward, settings, acc)
        # A fresh start: a kill before its first epoch must not resume the old run.
        if not resume and acc.is_main_process:
            remove_outputs(out, [CHECKPOINT, LOG, "grpo.json", "adapter", "adapter_raw", EVALUATED,
                                 CURVES_FILE],
                           "starting the GRPO run over")
        acc.wait_for_everyone()
        trainer.reward_name, trainer.base_model, trainer.named_rewards = reward_name, base_model, named_rewards
        start = _resume(trainer, out) if resume else 0
        with _nothing_to_resume_until_an_epoch_is_saved(out):
            return _epochs(trainer, out, train_prompts, eval_prompts, evaluators or {}, start, progress, command,
                           stop_after, eval_every, keep_evaluated)


@contextlib.contextmanager
def _nothing_to_resume_until_an_epoch_is_saved(out: Path) -> Iterator[None]:
    """Cut short before a checkpoint exists, a rerun starts afresh (the epoch-0 baseline is judged
    again, :func:`_resume`): the interruption's line says so instead of promising a resume."""
    try:
        yield
    except KeyboardInterrupt as error:
        if not (out / CHECKPOINT).exists() and not hasattr(error, "l2s_message"):
            error.l2s_message = (f"l2s: interrupted before the first GRPO epoch was saved in {out}: nothing to "
                                 "resume; rerun the command to start")
        raise


def _epochs(trainer: GRPOTrainer, out: Path, pool, eval_prompts, evaluators: dict, start: int, progress: bool,
            command: str | None, stop_after: int | None, eval_every: int = 1,
            keep_evaluated: bool = False) -> GRPOResult:
    from tqdm.auto import tqdm

    s, acc = trainer.settings, trainer.acc
    main = acc.is_main_process
    evaluating = bool(eval_prompts) and bool(evaluators)
    if start == 0 and main and evaluating and not (out / LOG).exists():
        baseline = evaluate(trainer, eval_prompts, evaluators, trainer.reward, progress, "dev (epoch 0)")
        fsync_append(out / LOG, [json.dumps({"epoch": 0, **baseline}) + "\n"])
    last = max(start, s.epochs if stop_after is None else min(s.epochs, start + stop_after))   # done: never fewer
    # read once: each epoch's row is kept here as it is appended, so curves.png costs no re-read
    history = [r for _, r in read_jsonl_lines(out / LOG, fix="delete it to start the log afresh")] if main else []
    warned = False
    with tqdm(total=s.epochs, initial=start, desc="GRPO epochs", disable=not (progress and main)) as bar:
        for epoch in range(start + 1, last + 1):
            record = run_epoch(trainer, pool, epoch, progress and main)
            if main:
                judged = evaluating and (epoch % eval_every == 0 or epoch == s.epochs)
                if judged:
                    record.update(evaluate(trainer, eval_prompts, evaluators, trainer.reward, progress,
                                           f"dev (epoch {epoch})"))
                    warned = _warn_if_hacked(history, record, warned)
                # The log line, the adapters, then the checkpoint: the checkpoint commits the epoch, and a
                # resume drops what came after the last one (a line or adapters of an epoch cut short).
                fsync_append(out / LOG, [json.dumps(record) + "\n"])
                _save(trainer, out, epoch, command, keep=judged and keep_evaluated)
                history.append(record)
                _draw_curves(out, history, evaluators)
            acc.wait_for_everyone()
            bar.update()
            shown = {k: f"{v:.3f}" for k, v in record.items()
                     if k.startswith("eval_") and isinstance(v, float) and not k.endswith("_s")}
            bar.set_postfix({"reward": f"{record['reward_mean']:.3f}", **shown}, refresh=False)
    records = [r for _, r in read_jsonl_lines(out / LOG, fix="delete it to start the log afresh")] \
        if (out / LOG).exists() else []
    return GRPOResult(last, records, out, start)


def _warn_if_hacked(history: list[dict], record: dict, warned: bool) -> bool:
    """Warn (once per command: ``warned``) when a held-out judge (a 0-1 accuracy) fell :data:`HACKING_DROP`
    below its epoch-0 value while the held-out reward rose above its own; whether it has warned now."""
    start = next((row for row in history if row.get("epoch") == 0), None)
    if warned or start is None or not record.get("eval_reward", math.nan) > start.get("eval_reward", math.nan):
        return warned   # (a NaN reward "rose" nowhere: a broken run is not called hacked)
    fallen = [key for key, value in record.items() if key.startswith("eval_") and key != "eval_reward"
              and isinstance(start.get(key), float) and isinstance(value, float) and not key.endswith("_s")
              and value <= start[key] - HACKING_DROP]
    if not fallen:
        return False
    drops = ", ".join(f"{key[5:]} {start[key]:.3f} -> {record[key]:.3f}" for key in fallen)
    log.warning("warning: epoch %d: the held-out reward rose (%.3f -> %.3f) while %s: the reward may be hacked "
                "(look at curves.png and the images; --keep-evaluated keeps each judged epoch's adapter to go back to)",
                record["epoch"], start["eval_reward"], record["eval_reward"], drops)
    return True


def _draw_curves(out: Path, rows: list[dict], evaluators: dict) -> None:
    """``curves.png`` from the whole log's ``rows``: rewards, the held-out evaluators, KL and clipping per epoch."""
    panels = [("reward", ("reward_mean", "eval_reward")), ("held-out", tuple(f"eval_{name}" for name in evaluators)),
              ("KL to the base model", ("kl",)), ("clipped ratios", ("clip_fraction",))]
    save_curves(out, rows, [panel for panel in panels if panel[1]], f"GRPO: {out}")


def _save(trainer: GRPOTrainer, out: Path, epoch: int, command: str | None, keep: bool = False) -> None:
    """The adapters (``keep``: this epoch's EMA one also under ``evaluated/``), the run's
    description, and last the checkpoint, which commits the epoch (an interrupted save is redone)."""
    card = _adapter_card(trainer, epoch, command)
    with trainer.ema.applied():
        _save_adapter(trainer.model, out / "adapter", card("EMA weights (what evaluation uses)"))
        if keep:
            (out / EVALUATED).mkdir(exist_ok=True)
            _save_adapter(trainer.model, out / EVALUATED / f"epoch-{epoch:04d}", card("EMA weights (judged)"))
    _save_adapter(trainer.model, out / "adapter_raw", card("Live weights (not averaged)"))
    atomic_write_json(out / "grpo.json", {"epochs_done": epoch, "settings": trainer.settings.run_identity(),
                                          "epochs": trainer.settings.epochs, "command": command,
                                          "adapter": "adapter (EMA weights); adapter_raw: live weights",
                                          "processes": trainer.acc.num_processes, "reward": trainer.reward_name,
                                          "base_model": trainer.base_model})
    atomic_torch_save({"epoch": epoch, "settings": json.dumps(trainer.settings.run_identity()), **trainer.state()},
                      out / CHECKPOINT)


def _adapter_card(trainer: GRPOTrainer, epoch: int, command: str | None):
    """The adapter's README (instead of peft's empty template): what made it and how to load it."""
    settings = json.dumps(trainer.settings.run_identity(), indent=2)
    made_by = f"    {command}" if command else "    (train_grpo called from Python)"

    def card(weights: str) -> str:
        return (f"# LoRA adapter from a GRPO run\n\n{weights} after epoch {epoch} of "
                f"{trainer.settings.epochs}, trained by:\n\n{made_by}\n\nLoad it with `l2s generate --lora DIR` "
                f"(or `l2s.grpo.apply_lora(pipe, DIR)`). Settings:\n\n```json\n{settings}\n```\n")
    return card


def _save_adapter(model, folder: Path, card: str) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    follow_umask(tmp)   # peft's safetensors files are 0600 otherwise
    (tmp / "README.md").write_text(card, encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _check_sources(out: Path, trainer: GRPOTrainer) -> None:
    """A run resumed with another reward or on another base model would train on two: refused
    (runs from before these were recorded, or a call that does not name them, are not checked)."""
    name, base = trainer.reward_name, trainer.base_model
    record = read_state_json(out / "grpo.json", fix="use --restart to start afresh")
    record = record if isinstance(record, dict) else {}
    _say_other_process_count(out, record.get("processes", 1) if record else None, trainer.acc)   # unsaid: one
    earlier = record.get("reward")
    if name and earlier is not None and not same_reward(earlier, name, trainer.named_rewards):
        raise L2SError(f"{out} holds a GRPO run trained with the reward {earlier!r}; this run asks for {name!r}: "
                       "use another --out or --restart to start afresh")
    if base and record.get("base_model") not in (None, base):
        raise L2SError(f"{out} holds a GRPO run of another base model ({record['base_model']}; this run's is "
                       f"{base}): give the model it was trained on (its command is in grpo.json), another --out, "
                       "or --restart to start afresh")


def _say_other_process_count(out: Path, earlier: int | None, acc) -> None:
    """A run resumed on another number of processes is allowed (a long run may grow), but its epochs
    from here share prompts and seeds otherwise than the uninterrupted run's would: said once."""
    if earlier is not None and earlier != acc.num_processes and acc.is_main_process:
        log.warning("%s was trained on %d process(es) and resumes on %d: its later epochs draw other prompts "
                    "and seeds than an uninterrupted run would (resume on %d to repeat it exactly)",
                    out, earlier, acc.num_processes, earlier)


def _resume(trainer: GRPOTrainer, out: Path) -> int:
    """Load ``out/checkpoint.pt`` when present; returns the last finished epoch (0 when none). Log
    lines of later epochs go; without a checkpoint every line goes (the epoch-0 baseline of a run cut
    short may be of another model or reward: nothing recorded says, so it is judged again)."""
    path = out / CHECKPOINT
    epoch = 0
    if path.is_file():
        _check_sources(out, trainer)
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, current = json.loads(state["settings"]), trainer.settings.run_identity()
        if differing := changed_settings(saved, current):
            raise L2SError(f"{path} was written by a run with other settings "
                           f"({described_changes(saved, current, differing)}); "
                           "use another --out or --restart to start afresh")
        trainer.load_state(state)
        epoch = int(state["epoch"])
    if trainer.acc.is_main_process and (out / LOG).exists():  # drop lines of epochs the checkpoint lacks
        lines = read_jsonl_lines(out / LOG, fix="delete it to start the log afresh")
        kept = [json.dumps(r) for _, r in lines if int(r["epoch"]) <= epoch] if path.is_file() else []
        if kept:
            atomic_write_text(out / LOG, "".join(line + "\n" for line in kept))
        else:   # no log: the baseline is judged afresh
            (out / LOG).unlink()
    return epoch
