"""``l2s shapes grpo``: GRPO-tune the shapes model's LoRA adapter for a spatial reward.

A thin front end over :func:`l2s.shapes.tuning.train_shapes_grpo`. Runs on one process, or
data-parallel: ``accelerate launch --multi_gpu --num_processes N -m l2s.cli shapes grpo ...``
(on a machine without CUDA too: the processes then run on the CPU and talk over gloo;
accelerate's ``--cpu`` flag alone would start a single process).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .help import command_parser
from .options import add_threads_arg, flag_of, out_path, use_threads

REWARDS_HELP = ("'rule' (exact detector + GenEval rule, 1 when the image passes its prompt), 'spatialscore' (the "
                "shipped SpatialScore reward model) or a trained SpatialScore folder (l2s shapes train-reward): its "
                "mean score is the reward")


def _grpo_settings():
    from l2s.grpo.settings import GRPOSettings

    return GRPOSettings()


def build_grpo_parser() -> argparse.ArgumentParser:
    p = command_parser("l2s shapes grpo", (
        "GRPO (Flow-GRPO's algorithm) on the shapes model: SDE sampling with log-probabilities, groups per "
        "prompt, top-k filtering, clipped ratio objective, KL to the base model, LoRA adapter with EMA. "
        "Writes OUT/adapter (load it with --lora OUT), OUT/log.jsonl and a checkpoint per epoch; rerun the "
        "same command to resume. Needs the [train] extra (peft, accelerate)."),
        ["l2s shapes grpo --reward rule --out runs/grpo-rule               # exact detector + GenEval rule",
         "l2s shapes grpo --reward runs/spatial-score --out runs/grpo-ss   # a trained SpatialScore",
         "accelerate launch --multi_gpu --num_processes 2 -m l2s.cli shapes grpo --reward rule --out runs/grpo"],
        settings=_grpo_settings)
    p.add_argument("--out", required=True, type=out_path, help="run folder (checkpoint, log, adapters)")
    p.add_argument("--reward", required=True, help=REWARDS_HELP)
    p.add_argument("--model", type=Path, help="shapes pipeline folder (default: the shipped model)")
    p.add_setting("--epochs", type=int, help="training epochs in all (a resumed run may raise it)")
    p.add_setting("--prompts-per-epoch", type=int, help="prompts sampled per epoch, a group of images each")
    p.add_setting("--group-size", type=int, help="images per prompt (at least 12)")
    top_k = p.add_mutually_exclusive_group()
    p.add_setting("--top-k", type=int, group=top_k, help="keep the k best and k worst of each group")
    top_k.add_argument("--no-top-k", action="store_true", help="train on every image of a group (ablation)")
    p.add_setting("--beta", type=float, help="weight of the KL to the base model")
    p.add_setting("--lr", type=float, help="learning rate (AdamW)")
    p.add_setting("--noise-level", type=float, help="SDE noise level a")
    p.add_argument("--sde-steps", type=int, help="SDE (trained) steps from the start (default: all but the last)")
    p.add_argument("--true-cfg", type=float, help="sampling guidance (default: the shapes recipe's)")
    p.add_setting("--clip-range", type=float, help="clip range of the probability ratio")
    p.add_setting("--adv-std", choices=("group", "global"), field="std", help="spread advantages divide by")
    p.add_setting("--optimizer-steps", type=int, help="AdamW steps per epoch")
    p.add_setting("--lora-rank", type=int, help="LoRA rank of the adapter")
    p.add_setting("--lora-alpha", type=float, help="LoRA alpha (the update is scaled by alpha / rank)")
    p.add_setting("--ema-decay", type=float, help="decay of the saved EMA adapter, per optimiser step")
    p.add_setting("--chunk", type=int, help="images per transformer call")
    p.add_setting("--seed", type=int,
                  help="seeds the adapter's initial weights, each epoch's prompts and its images' noise")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu or cuda (accelerate places the run: pick the GPU with CUDA_VISIBLE_DEVICES, several "
                        "with accelerate launch; default: cpu)")
    p.add_argument("--restart", "--no-resume", dest="no_resume", action="store_true",
                   help="start afresh even when OUT has a checkpoint (removes it, the log and the adapters)")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="judge the dev prompts after every N-th epoch and the last (default 1); training is the "
                        "same whatever N, so a resumed run may change it")
    p.add_argument("--keep-evaluated", action="store_true",
                   help="also keep the adapter of every judged epoch in OUT/evaluated/epoch-NNNN (bench any of them "
                        "later with --lora; OUT/adapter is only the latest)")
    add_threads_arg(p)
    p.add_argument("--quiet", "--no-progress", action="store_true", help="no progress bars (--no-progress: the same)")
    return p


def settings_from_args(args: argparse.Namespace, pipe=None):
    """The run's :class:`~l2s.grpo.GRPOSettings` (shapes sampling recipe + the options)."""
    from l2s.shapes.tuning import shapes_grpo_settings

    overrides = dict(epochs=args.epochs, prompts_per_epoch=args.prompts_per_epoch, group_size=args.group_size,
                     top_k=None if args.no_top_k else args.top_k, beta=args.beta, lr=args.lr,
                     noise_level=args.noise_level, sde_steps=args.sde_steps, clip_range=args.clip_range,
                     std=args.adv_std, optimizer_steps=args.optimizer_steps, lora_rank=args.lora_rank,
                     lora_alpha=args.lora_alpha, ema_decay=args.ema_decay, chunk=args.chunk, seed=args.seed)
    if args.true_cfg is not None:
        overrides["true_cfg"] = args.true_cfg
    return shapes_grpo_settings(pipe, **overrides)


def load_reward(name: str, device: str):
    """The reward callable ``--reward`` names (:func:`l2s.shapes.tuning.load_shapes_reward`)."""
    from l2s.shapes.tuning import load_shapes_reward

    return load_shapes_reward(name, device, what="--reward")


def grpo_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes grpo``: train (resuming by default) and save the adapter."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_grpo_parser().parse_args(argv)
    from accelerate import Accelerator

    from l2s.values import positive_int
    from l2s.reward.identity import reward_identity
    from l2s.shapes import load_shapes_pipeline
    from l2s.evaluation.curves import CURVES_FILE
    from l2s.shapes.tuning import base_model_identity, train_shapes_grpo

    use_threads(args)
    from l2s.devices import check_device

    check_device(args.device, flag_of())
    accelerator = Accelerator(cpu=args.device == "cpu")
    settings_from_args(args).check(accelerator.num_processes,   # bad settings fail before anything loads
                                   flag_of({"std": "--adv-std"}))
    positive_int(args.eval_every, "--eval-every")
    reward = load_reward(args.reward, str(accelerator.device))
    pipe = load_shapes_pipeline(args.model)
    settings = settings_from_args(args, pipe)
    command = "l2s shapes grpo " + " ".join(shlex.quote(a) for a in argv)
    result = train_shapes_grpo(args.out, reward, pipe=pipe, settings=settings,
                               resume=not args.no_resume, progress=not args.quiet, command=command,
                               accelerator=accelerator, eval_every=args.eval_every,
                               reward_name=reward_identity(args.reward),
                               keep_evaluated=args.keep_evaluated, base_model=base_model_identity(args.model))
    if accelerator.is_main_process:
        last = result.records[-1] if result.records else {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in last.items()
                          if k.startswith("eval_") and not k.endswith("_s") and isinstance(v, float))
        epochs = f"{result.epochs_done} epoch{'s' * (result.epochs_done != 1)}"
        if result.epochs_before >= result.epochs_done:
            print(f"l2s: {args.out} already holds {epochs} (--epochs {settings.epochs} asks for no more): nothing "
                  "ran; its last logged epoch:", file=sys.stderr)
        elif result.epochs_before:
            print(f"l2s: resumed after epoch {result.epochs_before} of the earlier run in {args.out}", file=sys.stderr)
        curves = f"; curves in {args.out / CURVES_FILE}" if (args.out / CURVES_FILE).is_file() else ""
        print(f"l2s: {epochs}; {shown}; adapter in {args.out / 'adapter'} (load with --lora {args.out}){curves}",
              file=sys.stderr)
    return 0
