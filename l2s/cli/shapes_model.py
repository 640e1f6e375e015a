"""``l2s shapes train-model``: train the shapes-world model, or continue a saved one.

A thin front end: parse the arguments, call :mod:`l2s.shapes`, print what was made.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from l2s.errors import L2SError, UsageError

from .help import command_parser
from .options import add_threads_arg, flag_of, out_path, use_threads


def _parse_pair(text: str) -> tuple[int, int]:
    """LOW-HIGH (or one number N for N-N), 1 <= LOW <= HIGH: argparse says what is wrong in one line."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH (two whole numbers, e.g. 2-4) or one number")
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW-HIGH needs 1 <= LOW <= HIGH")
    return low, high


def _train_settings():
    from l2s.shapes.configs import TrainSettings

    return TrainSettings()


def build_train_model_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "l2s shapes train-model",
        "Train the shapes-world FLUX model (rectified flow) from scratch, or continue a saved one (--init-from), "
        "and export it as a diffusers pipeline in OUT/pipeline. Resumes from OUT/checkpoint.pt by default.",
        ["l2s shapes train-model --out runs/shapes-model",
         "l2s shapes train-model --out runs/tiny --preset tiny --steps 200 --scenes 500 --time-limit 10",
         "l2s shapes train-model --out runs/s2 --init-from runs/shapes-model/pipeline --steps 8000 --lr 5e-4"],
        "The exact commands that made the shipped model: l2s/shapes/assets/TRAINING.md.",
        settings=_train_settings)
    parser.add_argument("--out", required=True, type=out_path, help="run directory (checkpoint, data cache, pipeline/)")
    parser.add_setting("--steps", type=int, help="total optimiser steps")
    parser.add_setting("--batch-size", type=int, help="images per optimiser step")
    parser.add_setting("--lr", type=float, help="peak learning rate (AdamW)")
    parser.add_setting("--seed", type=int, help="seeds the initial weights, the rendered scenes and the noise")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_setting("--scenes", type=int, help="pre-rendered training scenes")
    parser.add_setting("--size", type=int, help="image side in pixels")
    parser.add_setting("--objects", type=_parse_pair, field="n_objects", metavar="LOW-HIGH",
                       help="objects per scene")
    parser.add_setting("--object-sizes", type=_parse_pair, metavar="LOW-HIGH",
                       help="object side in pixels")
    parser.add_setting("--relation-caption-rate", type=float,
                       help="fraction of captions that state a relation")
    parser.add_setting("--sigma-sampling", choices=("logit-normal", "uniform"),
                       help="how training noise levels are drawn")
    parser.add_setting("--ema-decay", type=float, help="decay of the exported EMA weights, per step")
    parser.add_setting("--warmup", type=int, help="optimiser steps of linear learning-rate warm-up")
    parser.add_setting("--checkpoint-every", type=int, help="optimiser steps between checkpoints")
    parser.add_setting("--final-lr-fraction", type=float,
                       help="cosine decay target as a fraction of --lr (1 = constant after warm-up)")
    _add_model_options(parser)
    _add_run_options(parser)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("default", "tiny"), default="default",
                        help="model size (tiny: for tests); the options below override it")
    parser.add_argument("--heads", type=int, default=None, help="transformer attention heads")
    parser.add_argument("--head-dim", type=int, default=None, help="transformer head dimension")
    parser.add_argument("--double-layers", type=int, default=None, help="FLUX double-stream blocks")
    parser.add_argument("--single-layers", type=int, default=None, help="FLUX single-stream blocks")
    parser.add_argument("--vae-factor", type=int, default=None,
                        help="pixels per latent side (space-to-depth); FLUX packs 2x2 latents into a token, "
                             "so a token covers 2*F pixels a side (default 2)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/checkpoint.pt when present (default on)")
    parser.add_argument("--restart", dest="resume", action="store_false",
                        help="start over, as --no-resume (the name the other long commands use)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="stop after this many minutes and export the weights so far; the same "
                             "command later resumes and completes the run")
    add_threads_arg(parser)
    parser.add_argument("--init-from", type=Path, default=None, metavar="PIPELINE_DIR",
                        help="start from the transformer and T5 weights of a saved shapes pipeline "
                             "(continue a finished run with a new schedule); same model options required")
    parser.add_argument("--grow", action="store_true",
                        help="with --init-from: the new model may have more --double-layers/--single-layers; "
                             "the saved blocks come first and each new block starts as an identity")
    parser.add_argument("--repatch", action="store_true",
                        help="with --init-from: the new model may have another --vae-factor; everything but "
                             "the patch embedding and output projection is loaded")
    parser.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar (--quiet: the same)")


def train_settings_from_args(args: argparse.Namespace):
    """The :class:`~l2s.shapes.TrainSettings` of parsed ``train-model`` arguments."""
    from l2s.shapes import TINY_CONFIG, ShapesModelConfig, TrainSettings, rope_axes_for

    model = asdict(TINY_CONFIG if args.preset == "tiny" else ShapesModelConfig())
    overrides = {"num_heads": args.heads, "head_dim": args.head_dim, "double_layers": args.double_layers,
                 "single_layers": args.single_layers, "vae_factor": args.vae_factor}
    model.update({k: v for k, v in overrides.items() if v is not None}, image_size=args.size)
    if args.head_dim is not None:
        model["rope_axes"] = rope_axes_for(args.head_dim)
    model = ShapesModelConfig.from_dict(model)
    if model.double_layers + model.single_layers == 0:
        raise UsageError("--double-layers and --single-layers leave the model without a block: give one of them "
                         "1 or more")
    if args.size % (2 * model.vae_factor):
        raise L2SError(f"--size ({args.size}) must be a multiple of 2 x the VAE factor ({model.vae_factor}): "
                       f"{2 * model.vae_factor}; change --size or --vae-factor")
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         scenes=args.scenes, size=args.size, n_objects=tuple(args.objects),
                         object_sizes=tuple(args.object_sizes),
                         relation_caption_rate=args.relation_caption_rate, sigma_sampling=args.sigma_sampling,
                         ema_decay=args.ema_decay, warmup=args.warmup, checkpoint_every=args.checkpoint_every,
                         final_lr_fraction=args.final_lr_fraction,
                         init_from=str(args.init_from.resolve()) if args.init_from else None,
                         grow=args.grow, repatch=args.repatch,
                         model=asdict(model))


def _check_train_args(args: argparse.Namespace) -> None:
    from l2s.devices import check_device

    check_device(args.device, flag_of())
    _check_train_values(args)
    if args.grow and args.init_from is None:
        raise L2SError("--grow needs --init-from (the shallower pipeline to grow)")
    if args.repatch and args.init_from is None:
        raise L2SError("--repatch needs --init-from (the pipeline whose blocks start the run)")
    if args.repatch and args.grow:
        raise L2SError("--repatch and --grow cannot be combined (grow first, or repatch first)")
    if args.init_from is not None and not (args.init_from / "model_index.json").is_file():
        raise UsageError(f"--init-from: no shapes-world pipeline at {args.init_from} (model_index.json missing); "
                         "give the pipeline/ folder of an earlier train-model run")


def _check_train_values(args: argparse.Namespace) -> None:
    """Numbers that cannot train (0 steps, a negative rate, ...) fail before any scene is rendered."""
    from l2s.values import finite_number, positive_int, seed_value

    flag = flag_of()
    seed_value(args.seed, "--seed")

    if args.steps == 0 and args.init_from is None:   # 0 steps exports --init-from's weights as they are
        raise UsageError("--steps 0 exports the --init-from pipeline without training: give --init-from, or steps")
    for dest in ("batch_size", "scenes", "size", "checkpoint_every", "heads", "head_dim", "vae_factor"):
        if getattr(args, dest) is not None:
            positive_int(getattr(args, dest), flag(dest))
    for dest in ("steps", "double_layers", "single_layers", "warmup"):
        if getattr(args, dest) is not None and (not isinstance(getattr(args, dest), int) or getattr(args, dest) < 0):
            raise UsageError(f"{flag(dest)} must be 0 or more, got {getattr(args, dest)}")
    if args.time_limit is not None and not finite_number(args.time_limit, "--time-limit") > 0:
        raise UsageError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    if not finite_number(args.lr, "--lr") > 0:
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    for dest in ("ema_decay", "relation_caption_rate", "final_lr_fraction"):  # fractions
        if not 0 <= finite_number(getattr(args, dest), flag(dest)) <= 1:
            raise UsageError(f"{flag(dest)} must be between 0 and 1, got {getattr(args, dest)}")


def train_model_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes train-model``: train (resuming by default) and export the pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_train_model_parser().parse_args(argv)
    if "--resume" in argv and "--restart" in argv:   # opposites: neither may silently win by its place
        raise UsageError("--resume and --restart contradict each other: give one")

    from l2s.shapes import train

    use_threads(args)
    _check_train_args(args)
    settings = train_settings_from_args(args)
    command = "l2s shapes train-model " + " ".join(shlex.quote(a) for a in argv)
    trainer = train(settings, args.out, device=args.device, resume=args.resume,
                    progress=not args.no_progress, command=command,
                    time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    print(_trained_line(trainer, settings.steps, args.out / "pipeline"), file=sys.stderr)
    return 0


def _steps(n: int) -> str:
    return f"{n} step{'s' * (n != 1)}"


def _trained_line(trainer, steps: int, pipeline: Path) -> str:
    """What this call did: trained, resumed, or found a finished run (whose pipeline it exported again)."""
    if trainer.steps_resumed and trainer.steps_resumed >= steps:   # (--steps 0 --init-from: a new export)
        more = f", more than --steps {steps}" if trainer.steps_resumed > steps else ""
        return (f"l2s: {pipeline.parent} holds a finished run of {_steps(trainer.steps_resumed)}{more} (loss "
                f"{trainer.last_loss:.4f}): nothing to train; its pipeline is exported again to {pipeline}; more "
                "--steps continue it, --restart trains again")
    status = "" if trainer.step >= steps else f" of {steps} (time limit; rerun to resume)"
    resumed = f", resumed after step {trainer.steps_resumed}" if trainer.steps_resumed else ""
    return f"l2s: trained {_steps(trainer.step)}{status}{resumed}, loss {trainer.last_loss:.4f}; pipeline in {pipeline}"
