"""``l2s shapes bench`` and ``l2s shapes compare``: base vs steered accuracy of the shapes model,
and steering against fine-tuning in one table.

Thin front ends: parse the arguments, call :mod:`l2s.shapes`, print what was made.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from l2s.errors import L2SError, UsageError

from .checks import check_report_file, check_sampling_args
from .help import command_parser
from .models import ENGINES, EXECUTION_MODES
from .options import add_threads_arg, out_path, use_threads


def build_bench_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s shapes bench",
        "Base against steered spatial accuracy of a shapes model, part by part (two-object positions, "
        "multi-relation prompts, held-out words, ...): each part an 'l2s eval' run in OUT/<part> (resumable), "
        "the same seeds for both modes. Prints one table; --results also writes it as Markdown and JSON.",
        ["l2s shapes bench --out runs/bench --scale 0.25 --seeds 0,1",
         "l2s shapes bench --lora runs/grpo-ss --out runs/bench-grpo-ss   # base = tuned, steered = tuned + steering",
         "l2s shapes bench --results runs/shapes_accuracy.md"])
    _add_benched_options(p)
    _add_run_options(p)
    _add_generation_options(p)
    return p


def _add_benched_options(p: argparse.ArgumentParser) -> None:
    """What is benched: the model, its classifiers, a LoRA merged into it, a reward model scoring it."""
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Where the run and its results go, and what it generates and reports: parts, prompts, seeds, batch,
    modes, the classifiers' leakage check."""
    from l2s.shapes.recipes import BENCH_BATCH_SIZE, BENCH_SEEDS

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


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """How the images are made: guidance, steering step, threads, execution, engine; progress bars."""
    from l2s.shapes.settings import SHAPES_STEP_SIZE, SHAPES_TRUE_CFG

    p.add_argument("--true-cfg", type=float, metavar="SCALE",
                   help=f"sampling guidance against the empty caption (default {SHAPES_TRUE_CFG}; 1 = none)")
    p.add_argument("--step-size", type=float, metavar="ALPHA",
                   help=f"steering step size of every part (default {SHAPES_STEP_SIZE:g})")
    add_threads_arg(p)
    p.add_argument("--execution", choices=[m for m in EXECUTION_MODES if "cudagraphs" not in m], default="fast",
                   help="how steered iterations run: fast (default), fast+compiled (the whole iteration under "
                        "torch.compile; the first image compiles) or reference (the published implementation); "
                        "all steer alike")
    p.add_argument("--engine", choices=[e for e in ENGINES if "cuda" not in e and e != "tensorrt"], default="auto",
                   help="plain (unsteered) steps: auto (default: eager) or an engine built once and cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes bench``: base vs steered accuracy of the shapes model; prints one table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_bench_parser().parse_args(argv)

    from l2s.distributed import world
    from l2s.evaluation import parse_seeds
    from l2s.shapes import run_shapes_bench

    parts = _checked_bench_args(args)
    use_threads(args)
    results = run_shapes_bench(args.out, pipeline_dir=args.model, classifier=args.classifier,
                               ablation_classifier=args.ablation_classifier, scale=args.scale,
                               seeds=parse_seeds(args.seeds), parts=parts,
                               position_prompts=args.position_prompts, classifier_data=args.classifier_data,
                               true_cfg_scale=args.true_cfg, step_size=args.step_size, progress=not args.quiet,
                               lora=args.lora, batch_size=args.batch_size, reward_model=args.reward_model,
                               modes=[m.strip() for m in args.modes.split(",") if m.strip()],
                               execution=args.execution, engine=args.engine)
    if world().is_main:
        _say_bench_results(args, argv, results)
    return 0


def _checked_bench_args(args: argparse.Namespace) -> list[str] | None:
    """Every option checked before any work; the ``--parts`` keys (None: every part)."""
    from l2s.values import positive_int

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
    return parts


def _say_bench_results(args: argparse.Namespace, argv: list[str], results: dict) -> None:
    """The resumed count, the table on stdout, and the --results files written."""
    from l2s.shapes import bench_table, write_bench_results

    counts = [part.get("images", {}) for part in results["parts"]]
    resumed, total = sum(c.get("resumed", 0) for c in counts), sum(c.get("total", 0) for c in counts)
    if resumed:
        print(f"l2s: resumed: {resumed} of the {total} images were already made in {args.out}", file=sys.stderr)
    markdown = None
    if args.results:   # before the table: a reader that stops early (| head) must not cost the files
        command = "l2s shapes bench " + " ".join(shlex.quote(a) for a in argv)
        markdown = write_bench_results(results, args.results, command)
    print(bench_table(results))
    if markdown:
        print(f"l2s: wrote {markdown} and {markdown.with_suffix('.json')}", file=sys.stderr)


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
    if args.out:   # before the table: a reader that stops early (| head) must not cost the file
        from l2s.files import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table + "\n")
    print(table)
    if args.out:
        print(f"l2s: wrote {args.out}", file=sys.stderr)
    return 0
