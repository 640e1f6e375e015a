"""``l2s eval``: spatial accuracy, base against steered, or the scores of an existing image folder.

Besides :mod:`l2s.evaluation`'s own prompt sets and a local detector directory, ``--prompts``
and ``--detector`` know the shapes world's prompt sets and exact detector (registered here:
:func:`prompt_sets`, :func:`named_detectors`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .models import add_sampling_args, add_speed_args, default_device, load_steerer

EVAL_HELP = "measure spatial accuracy: generate with and without steering, detect, score"
EVAL_DESCRIPTION = (
    "Generate every prompt for every seed, unsteered (base) and steered from the same seed, "
    "detect the objects, score each relation (GenEval's or T2I-CompBench's rule) and report "
    "accuracy overall and per relation, side by side. Writes per-image PNG + JSON in "
    "GenEval's folder layout, results.jsonl, summary.json and contact sheets; rerunning the "
    "same command resumes. With --images DIR it only scores an existing GenEval image folder.")


def prompt_sets() -> dict:
    """The sets of ``--prompts``: :mod:`l2s.evaluation`'s and the shapes world's."""
    from l2s.evaluation import PROMPT_SETS
    from l2s.shapes import SHAPES_PROMPT_SET

    return {**PROMPT_SETS, "shapes": SHAPES_PROMPT_SET}


def named_detectors() -> dict[str, Callable]:
    """``--detector`` names other than a detector directory: the shapes world's exact detector."""
    from l2s.shapes import ShapesDetector

    return {"shapes": ShapesDetector}


def add_parser(sub, full: bool = True) -> None:
    """The ``eval`` subcommand; ``full=False`` adds only its name and help line (its options name
    the shapes world's prompt sets, whose package is slow to import)."""
    if not full:
        sub.add_parser("eval", help=EVAL_HELP, add_help=False)
        return
    from l2s.evaluation import RULES, prompt_set_help

    e = sub.add_parser("eval", help=EVAL_HELP, description=EVAL_DESCRIPTION)
    e.add_argument("--prompts", default="shapes", metavar="SET",
                   help="prompt set (default: shapes): " + prompt_set_help(prompt_sets()))
    e.add_argument("--n-prompts", type=int, metavar="N",
                   help="number of prompts (default: 100 for generated sets, the whole file for a file)")
    e.add_argument("--prompt-seed", type=int, default=0, help="seed of the generated prompt sets (default 0)")
    e.add_argument("--seeds", default="0,1,2,3",
                   help="image seeds, one image per prompt and seed, e.g. 0,1,2,3 or 0-3 (default: GenEval's 4)")
    e.add_argument("--mode", choices=("base", "steered", "both"), default="both",
                   help="unsteered, steered, or both from the same seeds (default)")
    e.add_argument("--model", default="tiny",
                   help="'tiny' (random tiny FLUX, offline demo) or a local diffusers pipeline dir "
                        "(FLUX, Stable Diffusion, or a shapes-world model from 'l2s shapes train-model')")
    e.add_argument("--classifier", help="classifier dir (from 'l2s train': OUT/best) or published .pth")
    e.add_argument("--detector", default="shapes",
                   help="'shapes' (exact detector of the shapes world, default) or a local transformers "
                        "detector dir (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg)")
    e.add_argument("--detector-threshold", type=float, default=0.3,
                   help="detection confidence threshold (default: GenEval's 0.3)")
    e.add_argument("--rule", choices=RULES, default="geneval", help="scoring rule (default geneval)")
    add_sampling_args(e)
    add_speed_args(e)
    e.add_argument("--images", metavar="DIR",
                   help="score this GenEval-layout folder (<digits>/metadata.jsonl, <digits>/samples/<n>.png) "
                        "instead of generating")
    e.add_argument("--out", default="l2s-eval", help="output directory (default: l2s-eval)")
    e.add_argument("--restart", action="store_true",
                   help="start over: remove the run already in --out (also the way out of a damaged one)")
    e.add_argument("--contact-sheet", action=argparse.BooleanOptionalAction, default=True,
                   help="write contact_sheet_NN.png with boxes and pass/fail (default on)")
    e.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights dtype for --model PATH (auto: bf16 on CUDA, fp32 on CPU)")
    e.add_argument("--device", default=default_device())
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """The options that need no file or model, before any work."""
    from l2s.errors import L2SError
    from l2s.training.options import check_device

    if args.n_prompts is not None and args.n_prompts < 1:
        raise L2SError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    if not 0.0 <= args.detector_threshold <= 1.0:
        raise L2SError(f"--detector-threshold must be in [0, 1], got {args.detector_threshold}")
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    from l2s.evaluation import RESULTS_FILE, SUMMARY_FILE

    _check_args(args)
    report = _score_folder(args) if args.images else _generate_and_score(args)
    print(report.table())
    print(f"l2s: wrote {Path(args.out) / SUMMARY_FILE} and {Path(args.out) / RESULTS_FILE}", file=sys.stderr)
    return 0


def _score_folder(args: argparse.Namespace):
    from l2s.evaluation import load_detector, score_image_folder
    from l2s.files import output_lock

    with output_lock(args.out):  # a second run into --out is refused before the detector loads
        detector = load_detector(args.detector, args.detector_threshold, args.device, named=named_detectors())
        return score_image_folder(args.images, detector, args.out, rule=args.rule,
                                  detector_name=_detector_id(args), contact_sheets=args.contact_sheet,
                                  progress=not args.quiet, restart=args.restart)


def _generate_and_score(args: argparse.Namespace):
    from l2s.evaluation import parse_seeds, resolve_prompt_set
    from l2s.files import output_lock

    # Everything that can be wrong with the request is checked before a model is loaded.
    specs, skipped = resolve_prompt_set(args.prompts, args.n_prompts, args.prompt_seed, sets=prompt_sets())
    if skipped:
        print(f"l2s: skipped {skipped} prompts of {args.prompts} without a spatial relation", file=sys.stderr)
    seeds = parse_seeds(args.seeds)
    with output_lock(args.out):  # a second run into --out is refused before any model loads
        return _run_locked(args, specs, seeds)


def _run_locked(args: argparse.Namespace, specs, seeds):
    from l2s.evaluation import MODES, check_scorable, load_detector, run_eval
    from l2s.evaluation.runs import read_run_file

    if not args.restart:
        read_run_file(args.out)  # a damaged run.json is refused before any model loads
    detector = load_detector(args.detector, args.detector_threshold, args.device, named=named_detectors())
    check_scorable(specs, args.rule, detector)
    steerer, source = load_steerer(args)
    print(f"l2s: model: {source}", file=sys.stderr)
    modes = MODES if args.mode == "both" else (args.mode,)
    # How images are made: a resumed run must match these exactly.
    settings = {"model": args.model, "classifier": args.classifier, "prompts": args.prompts,
                "n_prompts": args.n_prompts, "prompt_seed": args.prompt_seed, "steps": args.steps,
                "height": args.height, "width": args.width, "guidance": args.guidance,
                "sampling": steerer.sampling_options(), "schedule": args.schedule,
                "step_size": steerer.step_size,
                "dtype": args.dtype if args.model != "tiny" else None}
    return run_eval(
        steerer, specs, detector, args.out, seeds=seeds, modes=modes, rule=args.rule,
        num_inference_steps=args.steps, height=args.height, width=args.width,
        guidance_scale=args.guidance, schedule=args.schedule,
        settings=settings, detector_name=_detector_id(args), contact_sheets=args.contact_sheet,
        progress=not args.quiet, restart=args.restart)


def _detector_id(args: argparse.Namespace) -> str:
    """Identifies the scoring detector in per-image records (a change means re-scoring)."""
    if args.detector in named_detectors():
        return args.detector
    return f"{Path(args.detector).resolve()} (threshold {args.detector_threshold})"
