"""``l2s generate``: one image with relation steering, the unsteered one beside it, and a report.

Without ``--model`` it runs the shipped shapes-world model and classifier (``l2s/shapes/assets``);
``--model tiny`` is the random demo.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from .models import add_sampling_args, add_speed_args, default_device, load_steerer


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate an image with relation steering")
    g.add_argument("prompt")
    g.add_argument("--model", default=None,
                   help="default: the shipped shapes-world model and classifier (l2s/shapes/assets); "
                        "'tiny' (random tiny FLUX, offline demo) or a local diffusers pipeline dir")
    g.add_argument("--classifier", help="classifier dir (safetensors + config.json) or published .pth")
    g.add_argument("--lora", metavar="DIR", help="a LoRA adapter (peft folder, e.g. from 'l2s shapes grpo --out DIR') "
                   "merged into the FLUX transformer before steering")
    g.add_argument("--seed", type=int, default=0)
    add_sampling_args(g)
    add_speed_args(g)
    g.add_argument("--no-steer", action="store_true", help="generate without steering")
    g.add_argument("--no-baseline", action="store_true",
                   help="do not also write the unsteered image with the same seed")
    g.add_argument("--out", default="l2s-out", help="output directory (default: l2s-out)")
    g.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="weights dtype for --model PATH (SD: use fp32, as published)")
    g.add_argument("--device", default=default_device())
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2s.evaluation import probability_plot
    from l2s.parsing import parse_prompt

    started = time.perf_counter()
    parse_prompt(args.prompt)          # reject a bad prompt before loading any model
    steerer, source = load_steerer(args)
    print(f"l2s: model: {source}", file=sys.stderr)
    kwargs = dict(num_inference_steps=args.steps, height=args.height, width=args.width,
                  guidance_scale=args.guidance, seed=args.seed, progress=not args.quiet)
    result = steerer(args.prompt, steer=not args.no_steer, schedule=args.schedule, **kwargs)
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
        probability_plot(result.diagnostics.records).save(out / "probability.png")
    report["timings_s"]["command_total"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"l2s: wrote {out / 'image.png'} and {out / 'report.json'}", file=sys.stderr)
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


def _side_by_side(left, right, min_side: int = 256):
    """The unsteered and steered images side by side, enlarged to at least ``min_side`` pixels."""
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
