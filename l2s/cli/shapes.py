"""``l2s shapes ...``: train the shapes model, make its classifier's data, train the classifier, bench.

Thin front ends: parse the arguments, call :mod:`l2s.shapes`, print what was made.
"""
from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from l2s.errors import L2SError, UsageError

from .checks import check_report_file, check_sampling_args
from .help import command_parser
from .options import add_threads_arg, flag_of, out_path, use_threads

# --------------------------------------------------------------------------------------------
# l2s shapes train-model
# --------------------------------------------------------------------------------------------


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
    parser.add_setting("--batch-size", type=int)
    parser.add_setting("--lr", type=float, help="peak learning rate (AdamW)")
    parser.add_setting("--seed", type=int)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_setting("--scenes", type=int, help="pre-rendered training scenes")
    parser.add_setting("--size", type=int, help="image side in pixels")
    parser.add_setting("--objects", type=_parse_pair, field="n_objects", metavar="LOW-HIGH",
                       help="objects per scene")
    parser.add_setting("--object-sizes", type=_parse_pair, metavar="LOW-HIGH",
                       help="object side in pixels")
    parser.add_setting("--relation-caption-rate", type=float,
                       help="fraction of captions that state a relation")
    parser.add_setting("--sigma-sampling", choices=("logit-normal", "uniform"))
    parser.add_setting("--ema-decay", type=float)
    parser.add_setting("--warmup", type=int)
    parser.add_setting("--checkpoint-every", type=int)
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
        raise L2SError(f"--size must be a multiple of {2 * model.vae_factor}")
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

    from l2s.shapes import train

    use_threads(args)
    _check_train_args(args)
    settings = train_settings_from_args(args)
    command = "l2s shapes train-model " + " ".join(shlex.quote(a) for a in argv)
    trainer = train(settings, args.out, device=args.device, resume=args.resume,
                    progress=not args.no_progress, command=command,
                    time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    print(_trained_line(trainer, settings.steps, args.out / "pipeline"))
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


# --------------------------------------------------------------------------------------------
# l2s shapes make-data / train-classifier
# --------------------------------------------------------------------------------------------


def build_make_data_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s shapes make-data",
        "The shapes classifier's training data: render two-object scenes, invert each with the shapes model "
        "twice (its caption with the true relation word and with a wrong one, both labelled with the true "
        "relation) and store the attention maps recorded while reconstructing them. Resumable: rerun the same "
        "command after an interruption.",
        ["l2s shapes make-data --out runs/shapes-maps --scenes 2400          # the shipped model",
         "l2s shapes make-data --model runs/shapes-model/pipeline --out runs/shapes-maps --quiet"])
    p.add_argument("--model", help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--out", required=True, type=out_path)
    p.add_argument("--scenes", type=int, default=2400, help="two-object scenes to invert (default 2400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dual", action="store_true", help="pos prompts only")
    p.add_argument("--layers", type=int, metavar="K",
                   help="store only the first K blocks' maps (default: every layer, which serves any K)")
    p.add_argument("--restart", action="store_true",
                   help="start over: remove the dataset already in --out (also the way out of a damaged one)")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    return p


def make_data_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes make-data``: dual-inverted attention maps of rendered shapes scenes."""
    args = build_make_data_parser().parse_args(argv)

    from l2s.shapes import load_shapes_pipeline, make_shapes_data

    use_threads(args)
    from l2s.distributed import output_lock, world
    from l2s.values import positive_int, seed_value

    positive_int(args.scenes, "--scenes")
    seed_value(args.seed, "--seed")
    with output_lock(args.out, kind="make-data"):  # a second writer is refused before the model loads
        pipe = load_shapes_pipeline(args.model)
        summary = make_shapes_data(pipe, args.out, args.scenes, args.seed, dual=not args.no_dual,
                                   progress=not args.quiet, layers=args.layers, restart=args.restart)
    if world().is_main:
        print(summary.line())
    return 0


def build_train_classifier_parser() -> argparse.ArgumentParser:
    from l2s.shapes import SHAPES_CLASSIFIER_EPOCHS, SHAPES_CLASSIFIER_LR

    p = command_parser(
        "l2s shapes train-classifier",
        "Train the shapes-world relation classifier (small config) on a 'l2s shapes make-data' dataset; writes "
        "OUT/best (load it with --classifier OUT/best) and reports its validation accuracy per prompt type.",
        ["l2s shapes train-classifier --data runs/shapes-maps --out runs/shapes-classifier --epochs 40",
         "l2s shapes train-classifier --data runs/shapes-maps --out runs/shapes-classifier-k2 --layers 2"])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=out_path)
    p.add_argument("--no-dual", action="store_true", help="train on pos prompts only (leakage ablation)")
    p.add_argument("--layers", type=int, metavar="K",
                   help="a classifier of the model's first K blocks only (steering then cuts the forward "
                        "after block K); read from the same data (default: every layer the data holds)")
    p.add_argument("--epochs", type=int, default=SHAPES_CLASSIFIER_EPOCHS)
    p.add_argument("--lr", type=float, default=SHAPES_CLASSIFIER_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true",
                   help="start over: remove OUT's checkpoints and log (also the way out of a damaged state)")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    return p


def train_classifier_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes train-classifier``: the small shapes classifier on a make-data dataset."""
    args = build_train_classifier_parser().parse_args(argv)

    from l2s.shapes import train_shapes_classifier
    from l2s.training import check_training_options, validation_report

    check_training_options(epochs=args.epochs, lr=args.lr, seed=args.seed, layers=args.layers, spelled=flag_of())
    use_threads(args)
    result = train_shapes_classifier(args.data, args.out, dual=not args.no_dual, epochs=args.epochs, lr=args.lr,
                                     seed=args.seed, progress=not args.quiet, layers=args.layers,
                                     resume=not args.restart)
    from l2s.distributed import world

    if not world().is_main:
        return 0
    if resumed := result.resume_line():
        print(resumed)
    print(f"l2s: best epoch {result.best_epoch}: val accuracy {result.best_val_accuracy:.3f}; "
          f"weights in {result.best_dir}")
    for line in validation_report(result.best_dir, args.data):
        print(f"l2s: best checkpoint, {line}")
    return 0


# --------------------------------------------------------------------------------------------
# l2s shapes bench
# --------------------------------------------------------------------------------------------


def build_bench_parser() -> argparse.ArgumentParser:
    from l2s.shapes.recipes import BENCH_BATCH_SIZE, BENCH_SEEDS, SHAPES_STEP_SIZE, SHAPES_TRUE_CFG

    p = command_parser(
        "l2s shapes bench",
        "Base against steered spatial accuracy of a shapes model, part by part (two-object positions, "
        "multi-relation prompts, held-out words, ...): each part an 'l2s eval' run in OUT/<part> (resumable), "
        "the same seeds for both modes. Prints one table; --results also writes it as Markdown and JSON.",
        ["l2s shapes bench --out runs/bench --scale 0.25 --seeds 0,1",
         "l2s shapes bench --lora runs/grpo-ss --out runs/bench-grpo-ss   # base = tuned, steered = tuned + steering",
         "l2s shapes bench --results runs/shapes_accuracy.md"])
    p.add_argument("--model", type=Path, help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--classifier", help="dual classifier dir or shipped name (default: the shipped 'shapes')")
    p.add_argument("--ablation-classifier", help="pos-only classifier dir or shipped name (default: the shipped "
                                                 "'shapes-pos-only')")
    p.add_argument("--lora", type=Path, metavar="DIR",
                   help="a LoRA adapter (l2s shapes grpo --out DIR; 'shapes-grpo': the shipped one) merged into "
                        "the model: base = the tuned model, steered = the tuned model steered")
    p.add_argument("--reward-model", type=Path, metavar="DIR",
                   help="a SpatialScore ('spatialscore': the shipped one; or a l2s shapes train-reward folder): also "
                        "report its mean score and how well it ranks correct images above wrong ones, per part and "
                        "mode (reward hacking)")
    p.add_argument("--out", type=out_path, default=Path("l2s-shapes-bench"),
                   help="run directory (images, resumable; default l2s-shapes-bench)")
    p.add_argument("--results", type=Path, help="write the Markdown table here (and .json beside it)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the prompt counts of every part but the two-object one (default 1; at least 4 "
                        "prompts a part); a quick run also lowers --position-prompts")
    p.add_argument("--position-prompts", type=int, default=100,
                   help="two-object prompts (default 100; --scale leaves this part alone)")
    p.add_argument("--seeds", default=",".join(str(s) for s in BENCH_SEEDS),
                   help=f"image seeds (default {','.join(str(s) for s in BENCH_SEEDS)}; the multi-relation, preset "
                        "and held-out parts use the first two)")
    p.add_argument("--batch-size", type=int, default=BENCH_BATCH_SIZE, metavar="N",
                   help=f"images generated together in one steering call, each as if made alone to float "
                        f"rounding (default {BENCH_BATCH_SIZE}; larger batches use more memory for the steering "
                        "backward)")
    p.add_argument("--parts", help="comma-separated part keys to run (default all): position, multi_3_2, multi_4_3, "
                                    "ablation, preset_front-loaded, preset_front-loaded-20, preset_early-exit, "
                                    "preset_fast, ood, no_relation")
    p.add_argument("--modes", default="base,steered",
                   help="comma-separated modes to generate, of base and steered (default base,steered); e.g. "
                        "base alone for a tuned model compared without steering")
    p.add_argument("--classifier-data", type=Path,
                   help="the classifiers' map dataset (l2s shapes make-data): also compare dual and pos-only "
                        "on its held-out maps per prompt type (leakage check)")
    p.add_argument("--true-cfg", type=float, metavar="SCALE",
                   help=f"sampling guidance against the empty caption (default {SHAPES_TRUE_CFG}; 1 = none)")
    p.add_argument("--step-size", type=float, metavar="ALPHA",
                   help=f"steering step size of every part (default {SHAPES_STEP_SIZE:g})")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    return p


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes bench``: base vs steered accuracy of the shapes model; prints one table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_bench_parser().parse_args(argv)

    from l2s.evaluation import parse_seeds
    from l2s.values import positive_int
    from l2s.shapes import bench_table, run_shapes_bench, write_bench_results

    positive_int(args.batch_size, "--batch-size")
    positive_int(args.position_prompts, "--position-prompts")
    check_sampling_args(args)           # --true-cfg, --step-size: named before any work
    if not (math.isfinite(args.scale) and args.scale > 0):
        raise UsageError(f"--scale must be a positive number, got {args.scale!r}")
    if args.results:
        from l2s.shapes.bench_report import BENCH_TITLE, is_bench_results

        check_report_file(args.results, "--results", BENCH_TITLE, beside=(".json", is_bench_results),
                          run_folder=args.out)
    parts = None if args.parts is None else [key.strip() for key in args.parts.split(",") if key.strip()]
    if parts == []:
        raise UsageError("--parts: no part given (leave it out to run every part)")
    if args.classifier_data is not None:     # read at the end: a bad folder fails now, not after the images
        from l2s.training.store import load_dataset_meta

        try:
            load_dataset_meta(args.classifier_data)
        except L2SError as error:
            raise UsageError(f"--classifier-data: {error}") from None
    use_threads(args)
    results = run_shapes_bench(args.out, pipeline_dir=args.model, classifier=args.classifier,
                               ablation_classifier=args.ablation_classifier, scale=args.scale,
                               seeds=parse_seeds(args.seeds), parts=parts,
                               position_prompts=args.position_prompts, classifier_data=args.classifier_data,
                               true_cfg_scale=args.true_cfg, step_size=args.step_size, progress=not args.quiet,
                               lora=args.lora, batch_size=args.batch_size, reward_model=args.reward_model,
                               modes=[m.strip() for m in args.modes.split(",") if m.strip()])
    from l2s.distributed import world

    if not world().is_main:
        return 0
    counts = [part.get("images", {}) for part in results["parts"]]
    resumed, total = sum(c.get("resumed", 0) for c in counts), sum(c.get("total", 0) for c in counts)
    if resumed:
        print(f"l2s: resumed: {resumed} of the {total} images were already made in {args.out}", file=sys.stderr)
    print(bench_table(results))
    if args.results:
        command = "l2s shapes bench " + " ".join(shlex.quote(a) for a in argv)
        markdown = write_bench_results(results, args.results, command)
        print(f"l2s: wrote {markdown} and {markdown.with_suffix('.json')}", file=sys.stderr)
    return 0


def build_compare_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s shapes compare",
        "Steering against fine-tuning in one table, from bench results JSON files (l2s shapes bench --results "
        "X.md writes X.json): base and steering from the untuned bench, then each tuned adapter alone and with "
        "steering, with its training CPU-hours (from the GRPO run's log) and the break-even image count "
        "(\"never\" when the tuned model alone is less accurate than steering).",
        ["l2s shapes compare --bench runs/base.json --tuned GRPO-rule=runs/rule.json,runs/grpo-rule "
         "--tuned GRPO-SS=runs/ss.json,runs/grpo-ss --out runs/steer_vs_tune.md"])
    p.add_argument("--bench", required=True, type=Path, help="results JSON of the untuned model's bench")
    p.add_argument("--tuned", action="append", default=[], metavar="NAME=JSON[,GRPO_RUN]",
                   help="a tuned model's bench results (l2s shapes bench --lora ...) and the GRPO run folder "
                        "whose log gives its training cost; repeat for each")
    p.add_argument("--out", type=out_path, help="also write the table here (Markdown)")
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes compare``: one table of base, steering and tuned rows; prints it."""
    args = build_compare_parser().parse_args(argv)
    from l2s.shapes.compare import TABLE_START, Tuned, comparison_table, read_bench, training_cpu_seconds

    sources = []
    for item in args.tuned:
        name, _, paths = item.partition("=")
        bench, _, run = paths.partition(",")
        if not name or not bench:
            raise UsageError(f"bad --tuned {item!r}: use NAME=JSON or NAME=JSON,GRPO_RUN")
        sources.append((name, bench, run))
    if args.out:
        inputs = [args.bench] + [path for _, bench, run in sources for path in (bench, run) if path]
        check_report_file(args.out, "--out", TABLE_START, inputs=inputs)
    names = [name for name, _, _ in sources]
    if len(set(names)) < len(names):
        raise UsageError(f"--tuned: the name {next(n for n in names if names.count(n) > 1)!r} is given twice "
                         "(each row needs its own)")
    tuned = [Tuned(name, read_bench(bench), training_cpu_seconds(run) if run else None, run or None)
             for name, bench, run in sources]
    table = comparison_table(read_bench(args.bench), tuned)
    print(table)
    if args.out:
        from l2s.files import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table + "\n")
        print(f"l2s: wrote {args.out}", file=sys.stderr)
    return 0
