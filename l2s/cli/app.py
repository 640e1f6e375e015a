"""Command line: ``l2s parse``, ``generate``, ``eval``, ``make-data``, ``train`` and
``shapes train-model | make-data | train-classifier | bench``.

``l2s generate`` without ``--model`` runs the shipped shapes-world model and classifier
(``l2s/shapes/assets``, see :mod:`l2s.shapes.world`); ``--model tiny`` is the random demo.

Bad input ends with one line on stderr (``l2s: error: ...``) and exit code 2, never a silent
wrong image. ``make-data``, ``train`` and ``shapes train-model`` hand their arguments to the
modules that own them (``l2s.training.dataset``, ``l2s.training.train``, ``l2s.shapes.model``), imported only when used.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

from l2s.errors import L2SError, ModelLoadError, UsageError

EXIT_USAGE = 2
TRUE_CFG_HELP = ("FLUX only: classifier-free guidance against an empty prompt on the plain steps, as "
                 "diffusers' true_cfg_scale (default: 1 = none; the shapes world's own for its models)")
STEP_SIZE_HELP = ("steering step size (default: the published one per model, 5 for FLUX and SD 2.1, 7.5 for "
                  "SD 1.4; the shapes world's own for its models)")


def _cmd_parse(args: argparse.Namespace) -> int:
    from l2s.parsing import parse_cli_json, parse_prompt

    prompts = [line.rstrip("\n") for line in sys.stdin] if args.prompt == "-" else [args.prompt]
    for prompt in prompts:
        if args.json:
            print(json.dumps(parse_cli_json(prompt)))
        else:
            parsed = parse_prompt(prompt)
            for t in parsed.triplets:
                print(f"{t.subject} | {t.relation} | {t.object}")
            if not parsed.triplets:
                print(parsed.describe())
    return 0


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    from l2s import __version__

    info = {"l2s": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        import l2s_fast
        info["l2s_fast"] = l2s_fast.__version__
    except ImportError:
        info["l2s_fast"] = None
    return info


def _load(args: argparse.Namespace):
    """(steering pipeline, description of what was loaded)."""
    import torch

    from l2s.classifier import RelationClassifier
    from l2s.pipelines import load_diffusers_pipeline, wrap_pipeline

    true_cfg = getattr(args, "true_cfg", None)
    step_size = getattr(args, "step_size", None)
    flux_options = {} if true_cfg is None else {"true_cfg_scale": true_cfg}
    if args.model is None:
        from l2s.shapes.world import load_shapes_steerer, shipped_assets

        assets = shipped_assets()
        if assets.available:
            classifier = args.classifier or assets.classifier
            return (load_shapes_steerer(assets.pipeline, classifier, true_cfg_scale=true_cfg, step_size=step_size),
                    f"shipped shapes-world model {assets.pipeline}; classifier {classifier}")
        print(f"l2s: NOTE: the shipped shapes model is missing ({assets.pipeline}); falling back to the "
              "tiny RANDOM demo model: images are noise and steering means nothing", file=sys.stderr)
        args.model = "tiny"
    if args.model == "tiny":
        from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

        pipe = tiny_flux_pipeline(seed=0)
        if args.classifier:
            classifier = RelationClassifier.load(args.classifier)
            source = f"classifier {args.classifier}"
        else:
            classifier = tiny_classifier_for(pipe, seed=0)
            source = "random untrained classifier (tiny demo: steering runs, results mean nothing)"
        return (wrap_pipeline(pipe, classifier, step_size=step_size, **flux_options),
                f"tiny random FLUX pipeline; {source}")
    # Cheap checks first: a bad path should not cost loading a multi-GB pipeline.
    if not (Path(args.model) / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers pipeline at {args.model} (model_index.json missing)")
    if not args.classifier:
        raise L2SError("--classifier PATH is required with --model PATH")
    classifier = RelationClassifier.load(args.classifier)
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if str(args.device).startswith("cuda") else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    pipe = load_diffusers_pipeline(args.model, torch_dtype=dtype)
    pipe.to(args.device)
    source = f"{args.model}; classifier {args.classifier}"
    from l2s.shapes import is_shapes_pipeline

    if is_shapes_pipeline(pipe):  # a model from 'l2s shapes train-model': its own sampling settings
        from l2s.shapes import steer_shapes_pipeline

        return steer_shapes_pipeline(pipe, classifier, true_cfg_scale=true_cfg, step_size=step_size), source
    if flux_options and not hasattr(pipe, "transformer"):
        raise UsageError("--true-cfg applies to FLUX models; Stable Diffusion's guidance is --guidance")
    return wrap_pipeline(pipe, classifier, step_size=step_size, **flux_options), source


def _side_by_side(left, right, min_side: int = 256):
    from PIL import Image, ImageDraw

    scale = max(1, -(-min_side // max(left.width, left.height)))
    a = left.resize((left.width * scale, left.height * scale), Image.NEAREST)
    b = right.resize((right.width * scale, right.height * scale), Image.NEAREST)
    pad, label = 8, 18
    sheet = Image.new("RGB", (a.width + b.width + 3 * pad, a.height + 2 * pad + label), "white")
    sheet.paste(a, (pad, pad + label))
    sheet.paste(b, (2 * pad + a.width, pad + label))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "unsteered", fill="black")
    draw.text((2 * pad + a.width, 4), "steered", fill="black")
    return sheet


def _cmd_generate(args: argparse.Namespace) -> int:
    from l2s.parsing import parse_prompt

    started = time.perf_counter()
    parse_prompt(args.prompt)          # reject a bad prompt before loading any model
    steerer, source = _load(args)
    print(f"l2s: model: {source}", file=sys.stderr)
    kwargs = dict(num_inference_steps=args.steps, height=args.height, width=args.width,
                  guidance_scale=args.guidance, seed=args.seed, progress=not args.quiet)
    result = steerer(args.prompt, steer=not args.no_steer, **kwargs)
    plan = result.plan
    if not plan.steered:
        print(f"l2s: {plan.parsed.describe()}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.images[0].save(out / "image.png")
    report = {"prompt": args.prompt, "model": source, "seed": args.seed, **result.report(),
              "versions": _versions()}
    if plan.steered and not args.no_baseline:
        baseline = steerer(args.prompt, steer=False, **kwargs)
        baseline.images[0].save(out / "image_unsteered.png")
        _side_by_side(baseline.images[0], result.images[0]).save(out / "comparison.png")
        report["timings_s"]["unsteered_total"] = baseline.timings["total"]
    if plan.steered and result.diagnostics.records:
        from l2s.shapes import probability_plot

        probability_plot(result.diagnostics.records).save(out / "probability.png")
    report["timings_s"]["command_total"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"l2s: wrote {out / 'image.png'} and {out / 'report.json'}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import l2s.evaluation.runs as benchmark

    detector_name = args.detector
    if args.images:
        detector = benchmark.load_detector(detector_name, args.detector_threshold, args.device)
        report = benchmark.score_image_folder(
            args.images, detector, args.out, rule=args.rule, detector_name=_detector_id(args),
            contact_sheets=args.contact_sheet, progress=not args.quiet)
    else:
        # Everything that can be wrong with the request is checked before a model is loaded.
        specs, skipped = benchmark.resolve_prompt_set(args.prompts, args.n_prompts, args.prompt_seed)
        if skipped:
            print(f"l2s: skipped {skipped} prompts of {args.prompts} without a spatial relation", file=sys.stderr)
        seeds = benchmark.parse_seeds(args.seeds)
        detector = benchmark.load_detector(detector_name, args.detector_threshold, args.device)
        benchmark.check_scorable(specs, args.rule, detector)
        steerer, source = _load(args)
        print(f"l2s: model: {source}", file=sys.stderr)
        modes = benchmark.MODES if args.mode == "both" else (args.mode,)
        # How images are made: a resumed run must match these exactly.
        settings = {"model": args.model, "classifier": args.classifier, "prompts": args.prompts,
                    "n_prompts": args.n_prompts, "prompt_seed": args.prompt_seed, "steps": args.steps,
                    "height": args.height, "width": args.width, "guidance": args.guidance,
                    "sampling": steerer.sampling_options(), "schedule": args.schedule,
                    "step_size": steerer.step_size,
                    "dtype": args.dtype if args.model != "tiny" else None}
        report = benchmark.run_eval(
            steerer, specs, detector, args.out, seeds=seeds, modes=modes, rule=args.rule,
            num_inference_steps=args.steps, height=args.height, width=args.width,
            guidance_scale=args.guidance, schedule=None,  # "reference": the pipeline's published schedule
            settings=settings, detector_name=_detector_id(args), contact_sheets=args.contact_sheet,
            progress=not args.quiet)
    print(report.table())
    print(f"l2s: wrote {Path(args.out) / benchmark.SUMMARY_FILE} and {Path(args.out) / benchmark.RESULTS_FILE}",
          file=sys.stderr)
    return 0


def _detector_id(args: argparse.Namespace) -> str:
    """Identifies the scoring detector in per-image records (a change means re-scoring)."""
    if args.detector == "shapes":
        return "shapes"
    return f"{Path(args.detector).resolve()} (threshold {args.detector_threshold})"


# Subcommands owned by other modules: (argv prefix, module, function, help line).
_DELEGATED = (
    (("make-data",), "l2s.training.dataset", "make_data_main",
     "build the classifier's training data (attention maps of dual inversions)"),
    (("train",), "l2s.training.train", "train_main", "train the relation classifier on a 'make-data' dataset"),
    (("shapes", "train-model"), "l2s.shapes.model", "train_model_main",
     "train the shapes-world text-to-image model (from scratch, or continue one: --init-from)"),
    (("shapes", "make-data"), "l2s.shapes.world", "make_data_main",
     "dual-inverted attention maps of rendered shapes scenes (the classifier's data)"),
    (("shapes", "train-classifier"), "l2s.shapes.world", "train_classifier_main",
     "train the shapes-world relation classifier (small config; --no-dual: leakage ablation)"),
    (("shapes", "bench"), "l2s.shapes.world", "bench_main",
     "base vs steered spatial accuracy of the shapes model (writes the results table)"),
)


def _run_delegated(command: tuple[str, ...], module: str, function: str, argv: list[str]) -> int:
    name = "l2s " + " ".join(command)
    try:
        entry = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        print(f"l2s: error: '{name}' is not available in this installation ({module}.{function}: {error})",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(entry(argv) or 0)
    except L2SError as error:
        print(f"l2s: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2s", description="Learn-to-Steer: spatial relations in "
                                "text-to-image diffusion, steered by a learned relation classifier.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("parse", help="extract (subject, relation, object) triplets from prompts")
    sp.add_argument("prompt", help="the prompt, or - to read one prompt per line from stdin")
    sp.add_argument("--json", action="store_true", help="print one JSON array per prompt")
    sp.set_defaults(func=_cmd_parse)

    g = sub.add_parser("generate", help="generate an image with relation steering")
    g.add_argument("prompt")
    g.add_argument("--model", default=None,
                   help="default: the shipped shapes-world model and classifier (l2s/shapes/assets); "
                        "'tiny' (random tiny FLUX, offline demo) or a local diffusers pipeline dir")
    g.add_argument("--classifier", help="classifier dir (safetensors + config.json) or published .pth")
    g.add_argument("--seed", type=int, default=0)
    _add_sampling_args(g)
    g.add_argument("--no-steer", action="store_true", help="generate without steering")
    g.add_argument("--no-baseline", action="store_true",
                   help="do not also write the unsteered image with the same seed")
    g.add_argument("--out", default="l2s-out", help="output directory (default: l2s-out)")
    g.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="weights dtype for --model PATH (SD: use fp32, as published)")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    _add_eval_parser(sub)
    # Listed here for 'l2s --help'; main() hands their arguments to the owning module.
    for command, _, _, help_text in _DELEGATED:
        if len(command) == 1:
            sub.add_parser(command[0], help=help_text, add_help=False)
    shapes = sub.add_parser("shapes", help="the synthetic shapes world (see 'l2s shapes train-model --help')")
    shapes_sub = shapes.add_subparsers(dest="shapes_command", required=True)
    for command, _, _, help_text in _DELEGATED:
        if command[0] == "shapes":
            shapes_sub.add_parser(command[1], help=help_text, add_help=False)
    return p


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """How images are sampled and steered: shared by ``generate`` and ``eval``."""
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's published setting)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--guidance", type=float, help="guidance scale (default: published per model)")
    parser.add_argument("--true-cfg", type=float, metavar="SCALE", help=TRUE_CFG_HELP)
    parser.add_argument("--step-size", type=float, metavar="ALPHA", help=STEP_SIZE_HELP)


def _add_eval_parser(sub) -> None:
    from l2s.evaluation import RULES

    e = sub.add_parser(
        "eval", help="measure spatial accuracy: generate with and without steering, detect, score",
        description="Generate every prompt for every seed, unsteered (base) and steered from the same seed, "
                    "detect the objects, score each relation (GenEval's or T2I-CompBench's rule) and report "
                    "accuracy overall and per relation, side by side. Writes per-image PNG + JSON in "
                    "GenEval's folder layout, results.jsonl, summary.json and contact sheets; rerunning the "
                    "same command resumes. With --images DIR it only scores an existing GenEval image folder.")
    e.add_argument("--prompts", default="shapes", metavar="SET",
                   help="prompt set (default: shapes): " + _prompt_set_help())
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
    _add_sampling_args(e)
    e.add_argument("--schedule", choices=("reference",), default="reference",
                   help="steering schedule (default: reference, the published one)")
    e.add_argument("--images", metavar="DIR",
                   help="score this GenEval-layout folder (<digits>/metadata.jsonl, <digits>/samples/<n>.png) "
                        "instead of generating")
    e.add_argument("--out", default="l2s-eval", help="output directory (default: l2s-eval)")
    e.add_argument("--contact-sheet", action=argparse.BooleanOptionalAction, default=True,
                   help="write contact_sheet_NN.png with boxes and pass/fail (default on)")
    e.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights dtype for --model PATH (auto: bf16 on CUDA, fp32 on CPU)")
    e.add_argument("--device", default="cuda" if _cuda() else "cpu")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)


def _prompt_set_help() -> str:
    from l2s.evaluation import PROMPT_SET_HELP

    return PROMPT_SET_HELP


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for command, module, function, _ in _DELEGATED:
        if tuple(argv[:len(command)]) == command:
            return _run_delegated(command, module, function, argv[len(command):])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except L2SError as e:
        print(f"l2s: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
