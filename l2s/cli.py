"""Command line: ``l2s parse`` and ``l2s generate``.

Bad input ends with one line on stderr (``l2s: error: ...``) and exit code 2, never a silent
wrong image.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from .errors import L2SError, ModelLoadError

EXIT_USAGE = 2


def _cmd_parse(args: argparse.Namespace) -> int:
    from .parsing import parse_cli_json, parse_prompt

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

    from . import __version__

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

    from .classifier import RelationClassifier
    from .pipelines import load_diffusers_pipeline, wrap_pipeline

    if args.model == "tiny":
        from .testing import tiny_classifier_for, tiny_flux_pipeline

        pipe = tiny_flux_pipeline(seed=0)
        if args.classifier:
            classifier = RelationClassifier.load(args.classifier)
            source = f"classifier {args.classifier}"
        else:
            classifier = tiny_classifier_for(pipe, seed=0)
            source = "random untrained classifier (tiny demo: steering runs, results mean nothing)"
        return wrap_pipeline(pipe, classifier), f"tiny random FLUX pipeline; {source}"
    # Cheap checks first: a bad path should not cost loading a multi-GB pipeline.
    if not (Path(args.model) / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers pipeline at {args.model} (model_index.json missing)")
    if not args.classifier:
        raise L2SError("--classifier PATH is required with --model PATH")
    classifier = RelationClassifier.load(args.classifier)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    pipe = load_diffusers_pipeline(args.model, torch_dtype=dtype)
    pipe.to(args.device)
    return wrap_pipeline(pipe, classifier), f"{args.model}; classifier {args.classifier}"


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
    from .parsing import parse_prompt

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
    report["timings_s"]["command_total"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"l2s: wrote {out / 'image.png'} and {out / 'report.json'}", file=sys.stderr)
    return 0


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
    g.add_argument("--model", default="tiny",
                   help="'tiny' (random tiny FLUX, offline demo) or a local diffusers pipeline dir")
    g.add_argument("--classifier", help="classifier dir (safetensors + config.json) or published .pth")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, help="denoising steps (default: the model's published setting)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--guidance", type=float, help="guidance scale (default: published per model)")
    g.add_argument("--no-steer", action="store_true", help="generate without steering")
    g.add_argument("--no-baseline", action="store_true",
                   help="do not also write the unsteered image with the same seed")
    g.add_argument("--out", default="l2s-out", help="output directory (default: l2s-out)")
    g.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="weights dtype for --model PATH (SD: use fp32, as published)")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)
    return p


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except L2SError as e:
        print(f"l2s: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
