"""``l2s generate``: images with relation steering, the unsteered ones beside them, and reports.

One prompt and one seed write image.png and report.json into ``--out``; several prompts and/or
``--seeds`` make one image per prompt and seed, steered ``--batch-size`` at a time in one batched
call, each in its own folder (:mod:`.batches`). Without ``--model`` it runs the shipped
shapes-world model and classifier (``l2s/shapes/assets``); ``--model tiny`` is the random demo.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from l2s.errors import L2SError, UsageError
from l2s.versions import software_versions

from .batches import (Resume, batches, folders_line, image_jobs, image_settings, prompts_of, resume_state,
                      seeds_of, write_index)
from .checks import check_sampling_args, earlier_outputs, remove_stale_outputs
from .models import add_model_args, add_sampling_args, add_speed_args, load_steerer
from .options import add_device_arg, add_dtype_arg
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
several images: one folder each (many/p00-s0000/, ...) holding those files, and many/index.json
(written before the first batch and after every one: rerunning an interrupted command resumes after
its finished images; a run of other prompts, seeds or settings in --out is replaced only with
--restart)."""


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate images with relation steering", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="*", help="the prompt; several make one image per prompt and seed")
    g.add_argument("--prompts", metavar="FILE",
                   help="prompts from a file, one a line (UTF-8, blank lines ignored), after any PROMPT given")
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
    g.add_argument("--out", default="l2s-out", help="output directory (default: l2s-out)")
    g.add_argument("--restart", action="store_true",
                   help="several images: replace an earlier run of other images or settings in --out (without "
                        "it, such a run is refused, and a finished run of the same images is left as it is); one "
                        "image replaces an earlier one-image result in any case")
    add_dtype_arg(g)
    add_device_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2s.files import output_lock
    from l2s.pipelines.arguments import positive_int

    started = time.perf_counter()
    prompts, seeds = prompts_of(args), seeds_of(args)
    check_sampling_args(args)          # every option, before any work
    positive_int(args.batch_size, "--batch-size")
    jobs = image_jobs(prompts, seeds)
    if len(jobs) > 1 and args.save_maps:
        raise UsageError(f"--save-maps writes one image's maps: use it with one prompt and one seed "
                         f"(this run makes {len(jobs)} images)")
    relations = parse_relations(args.relations) if args.relations else None
    for number, prompt in enumerate(prompts):   # a bad prompt fails before any model loads
        _check_prompt(prompt, relations, number if len(prompts) > 1 else None)
    with output_lock(args.out):        # --out writable (and ours alone) before any model loads
        if len(jobs) == 1:
            return _generate(args, prompts[0], relations, started)
        return _generate_many(args, relations, jobs, started)


def _check_prompt(prompt: str, relations, number: int | None) -> None:
    """The prompt parses (or holds the --relations objects); among several, the error names it."""
    from l2s.parsing import parse_prompt

    try:
        given_parse(prompt, relations) if relations else parse_prompt(prompt)
    except L2SError as error:
        if number is None:
            raise
        raise type(error)(f"prompt {number} ({prompt!r}): {error}") from None


def _load(args: argparse.Namespace, relations):
    steerer, source = load_steerer(args)
    if relations:
        steer_given_relations(steerer, lambda prompt: relations)
    print(f"l2s: model: {source}", file=sys.stderr)
    return steerer, source


def _sampling(args: argparse.Namespace) -> dict:
    return {"num_inference_steps": args.steps, "height": args.height, "width": args.width,
            "guidance_scale": args.guidance, "progress": not args.quiet}


def _say(plan, outcome, args: argparse.Namespace, where: str = "") -> None:
    """Why an image is not steered, or steering's warning: one line (``where`` names its folder)."""
    if not plan.steered:
        print(f"l2s: {where}{plan.parsed.describe()}", file=sys.stderr)
    elif outcome.warning() and not args.no_steer:
        print(f"l2s: warning: {where}{outcome.warning()}", file=sys.stderr)


def _refuse_earlier(out: Path, what: str) -> None:
    raise UsageError(f"{out} holds {what}; use another --out, or --restart to replace it")


def _generate(args: argparse.Namespace, prompt: str, relations, started: float) -> int:
    from l2s.evaluation.attention_pictures import save_attention_grids, step_notes
    from l2s.pipelines.attention_maps import MapRecorder
    from l2s.steer import disabled_by

    several = earlier_outputs(args.out, several=True)
    if several and not args.restart:   # one image replaces one image, never an earlier run of many
        _refuse_earlier(Path(args.out), f"an earlier run of several images ({', '.join(several)})")
    steerer, source = _load(args, relations)
    kwargs = dict(_sampling(args), seed=args.seed)
    recorder = MapRecorder(steerer) if args.save_maps else None
    result = steerer(prompt, steer=not args.no_steer, schedule=args.schedule, **kwargs)
    if recorder is not None:
        recorder.detach()
    result.outcome = disabled_by(result.outcome, "--no-steer")
    steered = result.outcome.steered   # what ran: no update kept means no steered image
    _say(result.plan, result.outcome, args)
    out = Path(args.out)
    remove_stale_outputs(out)
    report = {"prompt": prompt, "relations_from": "--relations" if relations else "parser",
              "model": source, "seed": args.seed, **result.report(), "versions": software_versions()}
    baseline = None
    if steered and not args.no_baseline:
        baseline = steerer(prompt, steer=False, **kwargs)
        report["timings_s"]["unsteered_total"] = baseline.timings["total"]
    written = _write_images(out, result.images[0], baseline and baseline.images[0],
                            result.diagnostics.records if steered else None)
    verdicts = _verdicts(steerer, prompt, result.images[0], baseline and baseline.images[0])
    if verdicts:
        report["verdict"] = verdicts
        print("l2s: shapes detector, GenEval rule: " + "; ".join(
            f"{name}.png {'shows' if holds else 'does not show'} the prompt's relations"
            for name, holds in verdicts.items()), file=sys.stderr)
    if recorder is not None and recorder.steps:
        maps = save_attention_grids(result.images[0], recorder.steps, out / "maps",
                                    notes=step_notes(result.diagnostics.records))
        written += [str(path.relative_to(out)) for path in maps]
    report["timings_s"]["command_total"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(wrote_line(out, written + ["report.json"]), file=sys.stderr)
    return 0


def _verdicts(steerer, prompt: str, image, unsteered) -> dict[str, bool] | None:
    """On a shapes-world model, whether each image shows the prompt's relations (the exact detector);
    None elsewhere, or for a prompt the detector cannot judge."""
    from l2s.shapes import is_shapes_pipeline, prompt_verdict

    if not is_shapes_pipeline(steerer.pipe) or (holds := prompt_verdict(image, prompt)) is None:
        return None
    return {"image": holds, **({} if unsteered is None else {"image_unsteered": prompt_verdict(unsteered, prompt)})}


def _verdict_line(entries: list[dict]) -> str | None:
    judged = [e for e in entries if "verdict" in e]
    if not judged:
        return None
    line = (f"l2s: shapes detector, GenEval rule: {sum(e['verdict']['image'] for e in judged)} of {len(judged)} "
            "images show their prompt's relations")
    baselines = [e["verdict"]["image_unsteered"] for e in judged if "image_unsteered" in e["verdict"]]
    return line + (f" (their unsteered images: {sum(baselines)} of {len(baselines)})" if baselines else "")


def _write_images(folder: Path, image, baseline, records) -> list[str]:
    """image.png; the unsteered image and the comparison when given; the probability plot of a
    steered image's records. The names written."""
    from l2s.evaluation import probability_plot, side_by_side

    image.save(folder / "image.png")
    written = ["image.png"]
    if baseline is not None:
        baseline.save(folder / "image_unsteered.png")
        side_by_side(baseline, image).save(folder / "comparison.png")
        written += ["image_unsteered.png", "comparison.png"]
    if records:
        probability_plot(records).save(folder / "probability.png")
        written.append("probability.png")
    return written


def _generate_many(args: argparse.Namespace, relations, jobs, started: float) -> int:
    """Every (prompt, seed) of ``jobs``, ``--batch-size`` per steering call; a folder each and index.json.
    An interrupted run of the same images and settings resumes after its finished images."""
    out, settings = Path(args.out), image_settings(args)
    resume = Resume(None) if args.restart else resume_state(out, settings, jobs)
    if resume.finished:
        print(f"l2s: all {len(jobs)} images are already in {out} (same prompts, seeds and settings); "
              "--restart makes them again", file=sys.stderr)
        return 0
    if resume.why_not:
        _refuse_earlier(out, f"an earlier run with {resume.why_not}")
    earlier = [] if resume.entries is not None or args.restart else earlier_outputs(out)
    if earlier:
        _refuse_earlier(out, f"the outputs of an earlier run ({', '.join(earlier)})")
    steerer, source = _load(args, relations)   # first: a model that fails to load removes nothing
    if resume.entries is None:
        remove_stale_outputs(out)
        write_index(out, source, args.batch_size, [], jobs, settings, 0.0)   # a kill in the first batch resumes
    elif resume.entries:
        print(f"l2s: resuming: {len(resume.entries)} of {len(jobs)} images already in {out}", file=sys.stderr)
    entries = resume.entries or []
    done = {e["folder"] for e in entries}
    context = {"relations_from": "--relations" if relations else "parser", "model": source}
    versions, names = software_versions(), []
    for batch in batches([job for job in jobs if job.folder not in done], args.batch_size):
        for job, report, written in _generate_batch(steerer, args, batch, out):
            report = {"prompt": job.prompt, **context, "seed": job.seed, **report, "versions": versions}
            (out / job.folder / "report.json").write_text(json.dumps(report, indent=2))
            names += [name for name in written + ["report.json"] if name not in names]
            entries.append({"prompt": job.prompt, "seed": job.seed, "folder": job.folder,
                            "steered": report["steered"], **({"verdict": report["verdict"]} if "verdict" in report else {})})
        write_index(out, source, args.batch_size, entries, jobs, settings,
                    resume.seconds + time.perf_counter() - started)
    if verdict_line := _verdict_line(entries):
        print(verdict_line, file=sys.stderr)
    print(folders_line(out, jobs, names), file=sys.stderr)
    return 0


def _generate_batch(steerer, args: argparse.Namespace, batch, out: Path):
    """One steering call for the batch (and one unsteered call for its steered images): per image,
    (job, its report, the files written in its folder)."""
    from l2s.steer import disabled_by

    kwargs = _sampling(args)
    result = steerer([job.prompt for job in batch], seed=[job.seed for job in batch],
                     steer=not args.no_steer, schedule=args.schedule, **kwargs)
    result.outcomes = [disabled_by(outcome, "--no-steer") for outcome in result.outcomes]
    steered = [i for i, outcome in enumerate(result.outcomes) if outcome.steered]
    baseline = None
    if steered and not args.no_baseline:
        baseline = steerer([batch[i].prompt for i in steered], seed=[batch[i].seed for i in steered],
                           steer=False, **kwargs)
    for i, (job, report) in enumerate(zip(batch, result.reports())):
        _say(result.plans[i], result.outcomes[i], args, where=f"{job.folder}: ")
        (out / job.folder).mkdir(parents=True, exist_ok=True)
        unsteered = baseline.images[steered.index(i)] if baseline and i in steered else None
        written = _write_images(out / job.folder, result.images[i], unsteered,
                                result.diagnostics.for_image(i).records if i in steered else None)
        verdicts = _verdicts(steerer, job.prompt, result.images[i], unsteered)
        if verdicts:
            report["verdict"] = verdicts
        # timings_s are the whole batch call's: "batch" says how many images shared it
        report["timings_s"] = dict(report["timings_s"])
        if baseline is not None:
            report["timings_s"]["unsteered_total"] = baseline.timings["total"]
        report["batch"] = {"images": len(batch), "position": i}
        yield job, report, written
