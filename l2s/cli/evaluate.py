"""``l2s eval``: spatial accuracy, base against steered, or the scores of an existing image folder.

Besides :mod:`l2s.evaluation`'s own prompt sets and a local detector directory, ``--prompts``
and ``--detector`` know the shapes world's prompt sets and exact detector (registered here:
:func:`prompt_sets`, :func:`named_detectors`).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from .models import (add_model_args, add_sampling_args, add_speed_args, check_family_options, check_image_size,
                     check_model_dtype, load_steerer, resolve_dtype)
from .options import (add_device_arg, add_dtype_arg, add_threads_arg, flag_of,
                      out_text, resolve_device, use_threads)
from .outputs import folder_outputs, wrote_line
from .relations import EVAL_HELP as RELATIONS_HELP
from .relations import add_relations_arg, given_parse, parse_relations, steer_given_relations

EVAL_HELP = "measure spatial accuracy: generate with and without steering, detect, score"
EVAL_EXAMPLES = """examples:
  l2s eval --n-prompts 20 --seeds 0-3 --out l2s-eval          # shipped shapes model, shapes prompts
  l2s eval --prompts paraphrases.jsonl --relations checks --out runs/paraphrases   # no parser
  l2s eval --prompts geneval --model /models/FLUX.1-dev --classifier /models/l2s-flux-dev \\
      --detector /models/owlv2 --out runs/geneval
  l2s eval --images runs/geneval/steered --detector /models/owlv2 --out runs/rescored

writes results.jsonl, summary.json, run.json, contact sheets and the images in GenEval's layout;
rerunning the same command resumes."""
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


DETECTOR_THRESHOLD = 0.3   # GenEval's detection confidence


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
    from l2s.evaluation import RULES

    e = sub.add_parser("eval", help=EVAL_HELP, description=textwrap.fill(EVAL_DESCRIPTION, 100),
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    generation = _add_generation_args(e)
    e.add_argument("--detector", default="shapes",
                   help="'shapes' (exact detector of the shapes world, default) or a local transformers "
                        "detector dir (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg)")
    e.add_argument("--detector-threshold", type=float, default=DETECTOR_THRESHOLD,
                   help="detection confidence threshold of a detector dir (default: GenEval's 0.3; the shapes "
                        "detector is exact and has none)")
    e.add_argument("--rule", choices=RULES, default="geneval", help="scoring rule (default geneval)")
    e.add_argument("--images", metavar="DIR",
                   help="score this GenEval-layout folder (<digits>/metadata.jsonl, <digits>/samples/<n>.png) "
                        "instead of generating")
    e.add_argument("--out", type=out_text, default="l2s-eval", help="output directory (default: l2s-eval)")
    e.add_argument("--restart", action="store_true",
                   help="start over: remove the run already in --out (also the way out of a damaged one)")
    e.add_argument("--contact-sheet", action=argparse.BooleanOptionalAction, default=True,
                   help="write contact_sheet_NN.png with boxes and pass/fail (default on)")
    add_dtype_arg(e)
    add_device_arg(e)
    add_threads_arg(e)
    e.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    e.set_defaults(func=run, generation_defaults=generation)


def _add_generation_args(e: argparse.ArgumentParser) -> dict:
    """The options that make the images, in their own help section; {dest: (flag, default)} of
    each, so that scoring a folder (--images) can refuse them."""
    from l2s.evaluation import prompt_set_help

    g = e.add_argument_group("generating the images (not with --images)")
    g.add_argument("--prompts", default="shapes", metavar="SET",
                   help="prompt set (default: shapes): " + prompt_set_help(prompt_sets()))
    g.add_argument("--n-prompts", type=int, metavar="N",
                   help="number of prompts (default: 100 for generated sets, the whole file for a file); a "
                        "larger N in the same --out adds prompts and keeps the images made")
    g.add_argument("--prompt-seed", type=int, default=0, help="seed of the generated prompt sets (default 0)")
    g.add_argument("--seeds", default="0,1,2,3",
                   help="image seeds, one image per prompt and seed, e.g. 0,1,2,3 or 0-3 "
                        "(default: 0-3, GenEval's 4 seeds)")
    g.add_argument("--mode", choices=("base", "steered", "both"), default="both",
                   help="unsteered, steered, or both from the same seeds (default)")
    g.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="images generated together in one steering call, each as if made alone to float "
                        "rounding (default 4; larger batches use more memory for the steering backward)")
    add_model_args(g)
    add_relations_arg(g, RELATIONS_HELP)
    add_sampling_args(g)
    add_speed_args(g)
    return {a.dest: (a.option_strings[-1], a.default) for a in g._group_actions}


def _check_args(args: argparse.Namespace) -> None:
    """The options that need no file or model, before any work."""
    from l2s.errors import L2SError
    from l2s.values import positive_int, seed_value
    from l2s.devices import check_device

    from .checks import check_sampling_args

    positive_int(args.batch_size, "--batch-size")
    if args.n_prompts is not None and args.n_prompts < 1:
        raise L2SError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    if not 0.0 <= args.detector_threshold <= 1.0:
        raise L2SError(f"--detector-threshold must be in [0, 1], got {args.detector_threshold}")
    _refuse_unused_threshold(args)
    check_device(resolve_device(args), flag_of())
    check_sampling_args(args)  # --steps, --height, ...: ranges, never a default in their place
    seed_value(args.prompt_seed, "--prompt-seed")
    check_image_size(args)
    check_family_options(args)
    check_model_dtype(args)
    resolve_dtype(args)        # recorded as what loads (fp32 on a CPU), not auto
    given = [flag for dest, (flag, default) in args.generation_defaults.items() if getattr(args, dest) != default]
    if args.images and given:
        raise L2SError(f"--images only scores the images in that folder: {', '.join(given)} would make images "
                       "(leave them out, or generate without --images)")


def _refuse_unused_threshold(args: argparse.Namespace) -> None:
    """A named detector (the shapes world's, exact) has no threshold: another one given would change nothing."""
    from l2s.errors import UsageError

    if args.detector in named_detectors() and args.detector_threshold != DETECTOR_THRESHOLD:
        raise UsageError(f"--detector-threshold applies to a detector directory; the {args.detector} detector is "
                         "exact and has no threshold (leave it out)")


def run(args: argparse.Namespace) -> int:
    from l2s.distributed import world
    from l2s.evaluation.run_dir import refuse_generate_outputs, run_outputs

    _check_args(args)
    use_threads(args)
    group = world()  # under torchrun / accelerate launch: this process's share of the images
    # Before any model loads (scoring --images writes into --out too); rank 0 alone says so.
    group.on_main(lambda: refuse_generate_outputs(args.out))
    args.device = group.device(args.device)
    report = _score_folder(args) if args.images else _generate_and_score(args)
    if group.is_main:
        print(report.table())
        for line in _resumed_lines(report, args.out) + _warning_lines(report) + _no_verdict_lines(report):
            print(line, file=sys.stderr)
        print(wrote_line(Path(args.out), folder_outputs(Path(args.out), only=run_outputs(args.out))), file=sys.stderr)
    return 0


def _no_verdict_lines(report) -> list[str]:
    """The images no detector can judge, said apart: they are in no number of the table."""
    line = report.no_verdict_line()
    return [f"l2s: {line}"] if line else []


def _warning_lines(report) -> list[str]:
    """What made steering doubtful in this table's images (said again under it: a resumed run's
    images were steered in an earlier call, whose lines scrolled away)."""
    return [f"l2s: warning: {mode} images: {line}" for mode, part in report.modes.items()
            if hasattr(part, "warnings") for line in part.warnings()]


def _resumed_lines(report, out) -> list[str]:
    """What a rerun took from the earlier run (the table may be mostly, or all, its images) and
    which earlier scores it replaced."""
    records = [record for mode in report.modes.values() for record in mode.records]
    kept = sum(record.status == "resumed" for record in records)
    rescored = sum(record.status == "rescored" for record in records)
    lines = []
    if records and kept == len(records):
        which = "the one image was" if kept == 1 else f"all {kept} images were"
        lines.append(f"l2s: {which} already scored in {out} (same images and settings): the table is "
                     "theirs; --restart starts the run over")
    elif kept:
        lines.append(f"l2s: resumed: {kept} of the {len(records)} images were already scored in {out}")
    if rescored:
        lines.append(f"l2s: rescored {rescored} image{'s' * (rescored != 1)} in {out} whose earlier scores used "
                     "another rule or detector (those scores are replaced)")
    return lines


def _score_folder(args: argparse.Namespace):
    from l2s.distributed import output_lock
    from l2s.evaluation import load_detector, read_image_folder, score_image_folder
    from l2s.evaluation.folders import check_scoring_folder

    # The folder's layout and prompts, and --out, are checked before the detector loads (minutes, for a large one).
    images = read_image_folder(args.images)
    images.check_scorable(args.rule)
    with output_lock(args.out, kind="eval"):  # a second run into --out is refused before the detector loads
        check_scoring_folder(args.images, args.out, args.restart)
        detector = load_detector(args.detector, args.detector_threshold, args.device, named=named_detectors())
        return score_image_folder(images, detector, args.out, rule=args.rule,
                                  detector_name=_detector_id(args), contact_sheets=args.contact_sheet,
                                  progress=not args.quiet, restart=args.restart)


def _generate_and_score(args: argparse.Namespace):
    from l2s.distributed import output_lock, world
    from l2s.evaluation import parse_seeds, resolve_named_prompt_set

    # Everything that can be wrong with the request is checked before a model is loaded.
    specs, names, skipped = resolve_named_prompt_set(args.prompts, args.n_prompts, args.prompt_seed,
                                                     sets=prompt_sets())
    if world().is_main:
        for line in _prompt_file_lines(args.prompts, specs, skipped):
            print(line, file=sys.stderr)
    seeds = parse_seeds(args.seeds)
    relations_of = _given_relations(args.relations, specs, names)
    with output_lock(args.out, kind="eval"):  # a second run into --out is refused before any model loads
        return _run_locked(args, specs, seeds, relations_of, names)


def _prompt_file_lines(name: str, specs, skipped: int) -> list[str]:
    """What a prompt file holds besides one new prompt a line: lines without a relation (skipped)
    and repeated prompts (kept: a benchmark counts every line, but the images are the same)."""
    lines = []
    if skipped:
        lines.append(f"l2s: skipped {skipped} prompt{'s' if skipped != 1 else ''} of {name} without a spatial relation")
    repeats = len(specs) - len({spec.prompt for spec in specs})
    if repeats:
        lines.append(f"l2s: {repeats} prompt{'s' * (repeats != 1)} of {name} repeat{'s' * (repeats == 1)} an earlier "
                     "line: made and counted again, as the benchmark counts every line")
    return lines


def _given_relations(text: str | None, specs, names=None):
    """``--relations``: prompt -> relations to steer (checked against every prompt now, an error
    naming it by ``names``, default ``prompt i``), or None."""
    from l2s.errors import L2SError
    from l2s.evaluation.runs import prompt_name

    if text is None:
        return None
    if text.strip() == "checks":
        given = {spec.prompt: [(c.subject, c.relation, c.object) for c in spec.checks] for spec in specs}
    else:
        relations = parse_relations(text)
        given = {spec.prompt: relations for spec in specs}
    for index, spec in enumerate(specs):
        try:
            given_parse(spec.prompt, given[spec.prompt])
        except L2SError as error:
            raise type(error)(f"{prompt_name(names, index)}: {error}") from None
    return given.get


def _run_locked(args: argparse.Namespace, specs, seeds, relations_of=None, names=None):
    from l2s.distributed import world
    from l2s.evaluation import MODES, check_scorable, load_detector, run_eval
    from l2s.evaluation.run_settings import check_eval_resume, spelled_as_recorded, with_steerer_settings

    settings = _request_settings(args)
    modes = MODES if args.mode == "both" else (args.mode,)
    if not args.restart:   # a damaged run.json, other settings or fewer images: refused before any model loads
        settings = check_eval_resume(args.out, settings, seeds, modes, len(specs))
    detector = load_detector(args.detector, args.detector_threshold, args.device, named=named_detectors())
    check_scorable(specs, args.rule, detector, names)
    steerer, source = load_steerer(args)
    if relations_of is not None:
        steer_given_relations(steerer, relations_of)
    if world().is_main:
        print(f"l2s: model: {source}", file=sys.stderr)
    settings = with_steerer_settings(settings, steerer)
    if not args.restart:
        settings = spelled_as_recorded(args.out, settings)
    return run_eval(
        steerer, specs, detector, args.out, seeds=seeds, modes=modes, rule=args.rule,
        num_inference_steps=args.steps, height=args.height, width=args.width,
        guidance_scale=args.guidance, schedule=args.schedule,
        settings=settings, detector_name=_detector_id(args), contact_sheets=args.contact_sheet,
        progress=not args.quiet, restart=args.restart, batch_size=args.batch_size, prompt_names=names)


def _request_settings(args: argparse.Namespace) -> dict:
    """How images are made, as far as the command line says before a model loads (a resumed run
    must match these exactly; the loaded steerer adds its effective sampling and kernels)."""
    from l2s.evaluation.run_settings import eval_settings
    from l2s.models import lora_folder, weights_digests

    digests = weights_digests(args.model, args.classifier, args.lora)
    return eval_settings(vars(args), digests, lora_folder(args.lora) if args.lora else None)


def _detector_id(args: argparse.Namespace) -> str:
    """Identifies the scoring detector in per-image records (a change means re-scoring)."""
    if args.detector in named_detectors():
        return args.detector
    return f"{Path(args.detector).resolve()} (threshold {args.detector_threshold})"
