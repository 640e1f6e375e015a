"""``l2s generate``: images with relation steering, the unsteered ones beside them, and reports.

One prompt and one seed write image.png and report.json into ``--out``; several prompts and/or
``--seeds`` make one image per prompt and seed, steered ``--batch-size`` at a time in one batched
call, each in its own folder (:mod:`.batches`). Without ``--model`` it runs the shipped
shapes-world model and classifier (``l2s/shapes/assets``); ``--model tiny`` is the random demo.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from l2s.errors import L2SError, UsageError
from l2s.models import weights_digests

from .batches import NOT_IMAGE_SETTINGS, folders_line, labelled_prompts, seeds_of
from .checks import check_sampling_args
from .models import (add_model_args, add_sampling_args, add_speed_args, check_family_options, check_image_size,
                     check_model_dtype, load_steerer, resolve_dtype)
from .options import add_device_arg, add_dtype_arg, add_threads_arg, out_text, use_threads
from .outputs import wrote_line
from .relations import add_relations_arg, given_parse, parse_relations, steer_given_relations

DESCRIPTION = """Generate an image of PROMPT with relation steering, the unsteered image of the same
seed beside it, and a report. Several prompts (or --prompts FILE) and --seeds make one image per
prompt and seed, generated --batch-size at a time in one batched steering call. Without --model the
shipped shapes-world model and classifier run (a CPU does it in seconds)."""
EXAMPLES = """examples:
  l2s generate "a red circle to the left of a blue square"
  l2s generate "to the left of a cat there is a dog" --model tiny --relations "dog,left of,cat"
  l2s generate "a photo of a dog right of a teddy bear" --model /models/FLUX.1-dev \\
      --classifier /models/l2s-flux-dev --dtype bf16 --out dog/
  l2s generate "a red circle left of a blue square" "a green triangle above a red circle" \\
      --seeds 0-7 --batch-size 8 --out many/

writes image.png (steered), image_unsteered.png, comparison.png, probability.png and report.json;
several images: one folder each (many/p00-s0000/, ...) holding those files, many/index.json
(written before the first batch and after every one: rerunning an interrupted command resumes after
its finished images; a run of other prompts, seeds or settings in --out is replaced only with
--restart) and many/overview_01.png, ... (every image at a glance, 32 a page)."""


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate images with relation steering", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="*", help="the prompt; several make one image per prompt and seed")
    g.add_argument("--prompts", metavar="FILE",
                   help="prompts from a file ('-': standard input), one a line (UTF-8, blank lines ignored), "
                        "after any PROMPT given")
    add_model_args(g)
    add_relations_arg(g)
    g.add_argument("--seed", type=int, default=None, help="the seed (default 0)")
    g.add_argument("--seeds", metavar="LIST",
                   help="several seeds, e.g. 0-7, 1,4,9 or 0-3,10: one image per prompt and seed")
    g.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images steered together in one call (default 8)")
    add_sampling_args(g)
    add_speed_args(g)
    g.add_argument("--no-steer", action="store_true", help="generate without steering")
    g.add_argument("--no-baseline", action="store_true",
                   help="do not also write the unsteered image with the same seed")
    g.add_argument("--save-maps", action="store_true",
                   help="also write maps/step_NN.png: at every steered step, each object's cross-attention "
                        "map (what the classifier reads) before and after steering, over the image "
                        "(one prompt and one seed only)")
    g.add_argument("--out", type=out_text, default="l2s-out",
                   help="output directory (default: l2s-out): a new or empty folder, or an earlier 'l2s generate' "
                        "run's; one holding files l2s did not write (--out . in a folder of yours) is refused, "
                        "so nothing of yours is written over")
    g.add_argument("--restart", action="store_true",
                   help="several images: replace an earlier run of other images or settings in --out (without "
                        "it, such a run is refused, and a finished run of the same images is left as it is); one "
                        "image replaces an earlier one-image result in any case")
    add_dtype_arg(g)
    add_device_arg(g)
    add_threads_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    g.set_defaults(func=run)


ONE_IMAGE_INTERRUPTED = "l2s: interrupted; one image has nothing to resume: rerun the command to make it"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    labelled, seeds = labelled_prompts(args), seeds_of(args)
    try:
        return _run(args, labelled, seeds, started)
    except KeyboardInterrupt as error:   # one image has no partial state to resume from, cut short anywhere
        if len(labelled) * len(seeds) == 1 and not hasattr(error, "l2s_message"):
            error.l2s_message = ONE_IMAGE_INTERRUPTED
        raise


def _run(args: argparse.Namespace, labelled: list[tuple[str, str]], seeds: list[int], started: float) -> int:
    from l2s.evaluation.image_runs import image_jobs
    from l2s.evaluation.records import RESULTS_FILE, RUN_FILE, SUMMARY_FILE
    from l2s.files import output_lock
    from l2s.values import positive_int

    prompts = [prompt for _, prompt in labelled]
    check_sampling_args(args)          # every option, before any work
    check_image_size(args)
    check_family_options(args)
    check_model_dtype(args)
    resolve_dtype(args)                # recorded as what loads: fp32 on a CPU, not auto
    positive_int(args.batch_size, "--batch-size")
    use_threads(args)
    jobs = image_jobs(prompts, seeds)
    if len(jobs) > 1 and args.save_maps:
        raise UsageError(f"--save-maps writes one image's maps: use it with one prompt and one seed "
                         f"(this run makes {len(jobs)} images)")
    if args.save_maps and args.no_steer:
        raise UsageError("--save-maps records the steered steps' maps: there are none with --no-steer")
    relations = parse_relations(args.relations) if args.relations is not None else None
    for label, prompt in labelled:   # a bad prompt fails before any model loads
        _check_prompt(prompt, relations, label if len(prompts) > 1 or args.prompts else None)
    with output_lock(args.out, kind="generate"):        # --out writable (and ours alone) before any model loads
        evaluated = [name for name in (RUN_FILE, SUMMARY_FILE, RESULTS_FILE) if (Path(args.out) / name).exists()]
        if evaluated:                  # --restart replaces generate's files only
            raise UsageError(f"{args.out} holds an 'l2s eval' run ({', '.join(evaluated)}); use another --out")
        if len(jobs) == 1:
            return _generate(args, prompts[0], relations, started)
        return _generate_many(args, relations, jobs, started)


def _check_prompt(prompt: str, relations, label: str | None) -> None:
    """The prompt parses (or holds the --relations objects); among several, the error names it."""
    from l2s.parsing import parse_prompt

    try:
        given_parse(prompt, relations) if relations else parse_prompt(prompt)
    except L2SError as error:
        if label is None:
            raise
        raise type(error)(f"{label} ({prompt!r}): {error}") from None


def _load(args: argparse.Namespace, relations):
    steerer, source = load_steerer(args)
    if relations:
        steer_given_relations(steerer, lambda prompt: relations)
    print(f"l2s: model: {source}", file=sys.stderr)
    return steerer, source


def _say(line: str) -> None:
    print(f"l2s: {line}", file=sys.stderr)


def _options(args: argparse.Namespace, steerer, source: str, relations):
    from l2s.evaluation.generation import GenerateOptions
    from l2s.shapes import is_shapes_pipeline, prompt_verdicts

    sampling = {"num_inference_steps": args.steps, "height": args.height, "width": args.width,
                "guidance_scale": args.guidance, "progress": not args.quiet}
    judge = None
    if is_shapes_pipeline(steerer.pipe):   # the relations steered are the ones judged
        judge = (lambda image, prompt: prompt_verdicts(image, prompt, given_parse(prompt, relations))) \
            if relations else prompt_verdicts
    return GenerateOptions(steer=not args.no_steer, baseline=not args.no_baseline, schedule=args.schedule,
                           sampling=sampling, judge=judge,
                           context={"relations_from": "--relations" if relations else "parser", "model": source},
                           disabled_by="--no-steer")


def _generate(args: argparse.Namespace, prompt: str, relations, started: float) -> int:
    from l2s.evaluation.generation import generate_image, write_image_report
    from l2s.evaluation.image_runs import earlier_outputs, refuse_earlier
    from l2s.pipelines.attention_maps import MapRecorder

    several = earlier_outputs(args.out, several=True)
    if several and not args.restart:   # one image replaces one image, never an earlier run of many
        refuse_earlier(Path(args.out), f"an earlier run of several images ({', '.join(several)})")
    settings = _image_settings(args)   # as index.json keeps several images'
    steerer, source = _load(args, relations)
    recorder = MapRecorder(steerer) if args.save_maps else None
    out = Path(args.out)
    report, written = generate_image(steerer, prompt, args.seed, out, _options(args, steerer, source, relations),
                                     recorder, say=_say)
    if "verdict" in report:
        _say("shapes detector, GenEval rule: " + "; ".join(
            f"{name}.png {'shows' if holds else 'does not show'} the prompt's relations"
            for name, holds in report["verdict"].items()))
    elif "no_verdict" in report:
        _say(f"shapes detector, GenEval rule: no verdict: {report['no_verdict']}")
    written.append(write_image_report(out, report, settings, started))
    print(wrote_line(out, written), file=sys.stderr)
    return 0


def _image_settings(args: argparse.Namespace) -> dict:
    """The options that make the images, and the fingerprints of the weights they name."""
    from l2s.evaluation.run_settings import image_settings

    settings = image_settings(vars(args), NOT_IMAGE_SETTINGS)
    return {**settings, **weights_digests(args.model, args.classifier, args.lora)}


def _verdict_line(entries: list[dict]) -> str | None:
    judged, unjudged = [e for e in entries if "verdict" in e], [e for e in entries if "no_verdict" in e]
    if not judged and not unjudged:
        return None
    if not judged:        # "0 of 0 images show ..." would read as a count of failures
        none = "no image has" if len(unjudged) == 1 else f"none of the {len(unjudged)} images has"
        return f"l2s: shapes detector, GenEval rule: {none} a verdict ({unjudged[0]['no_verdict']})"
    line = (f"l2s: shapes detector, GenEval rule: {sum(e['verdict']['image'] for e in judged)} of {len(judged)} "
            "images show their prompt's relations")
    baselines = [e["verdict"]["image_unsteered"] for e in judged if "image_unsteered" in e["verdict"]]
    line += f" (their unsteered images: {sum(baselines)} of {len(baselines)})" if baselines else ""
    # Prompts that can never be judged are not counted: said apart, with the first one's reason.
    return line + (f"; {len(unjudged)} without a verdict ({unjudged[0]['no_verdict']})" if unjudged else "")


def _generate_many(args: argparse.Namespace, relations, jobs, started: float) -> int:
    """Every (prompt, seed) of ``jobs``, ``--batch-size`` per steering call; a folder each and index.json.
    An interrupted run of the same images and settings resumes after its finished images."""
    from l2s.evaluation.generation import generate_images
    from l2s.evaluation.image_runs import open_image_run
    from l2s.evaluation.run_settings import unset_defaults

    out, settings = Path(args.out), _image_settings(args)
    resume = open_image_run(out, jobs, settings, args.restart, unset_means=unset_defaults(),
                            not_compared=frozenset(NOT_IMAGE_SETTINGS))
    if resume.finished:
        _say(f"all {len(jobs)} images are already in {out} (same prompts, seeds and settings); "
             "--restart makes them again")
        return 0
    steerer, source = _load(args, relations)   # first: a model that fails to load removes nothing
    entries, names = generate_images(steerer, jobs, out, _options(args, steerer, source, relations), resume=resume,
                                     source=source, settings=settings, batch_size=args.batch_size,
                                     started=started, say=_say)
    if verdict_line := _verdict_line(entries):
        print(verdict_line, file=sys.stderr)
    print(folders_line(out, jobs, names, resumed=len(resume.entries or [])), file=sys.stderr)
    return 0
