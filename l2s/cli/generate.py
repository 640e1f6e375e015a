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

from .checks import check_sampling_args, remove_stale_outputs
from .models import add_sampling_args, add_speed_args, load_steerer
from .options import add_device_arg, add_dtype_arg
from .outputs import wrote_line
from .relations import add_relations_arg, given_parse, parse_relations, steer_given_relations

DESCRIPTION = """Generate one image of PROMPT with relation steering, the unsteered image of the same
seed beside it, and a report. Without --model the shipped shapes-world model and classifier run
(a CPU does it in seconds)."""
EXAMPLES = """examples:
  l2s generate "a red circle to the left of a blue square"
  l2s generate "to the left of a cat there is a dog" --model tiny --relations "dog,left of,cat"
  l2s generate "a photo of a dog right of a teddy bear" --model /models/FLUX.1-dev \\
      --classifier /models/l2s-flux-dev --dtype bf16 --out dog/

writes image.png (steered), image_unsteered.png, comparison.png, probability.png and report.json."""


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate an image with relation steering", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt")
    g.add_argument("--model", default=None,
                   help="default: the shipped shapes-world model and classifier (l2s/shapes/assets); "
                        "'tiny' (random tiny FLUX, offline demo), a local diffusers pipeline folder, or a hub "
                        "id in the local Hugging Face cache")
    g.add_argument("--classifier", help="classifier folder (safetensors + config.json), hub id in the local "
                                        "cache, or published .pth")
    add_relations_arg(g)
    g.add_argument("--lora", metavar="DIR", help="a LoRA adapter (peft folder, e.g. from 'l2s shapes grpo --out DIR') "
                   "merged into the FLUX transformer before steering")
    g.add_argument("--seed", type=int, default=0)
    add_sampling_args(g)
    add_speed_args(g)
    g.add_argument("--no-steer", action="store_true", help="generate without steering")
    g.add_argument("--no-baseline", action="store_true",
                   help="do not also write the unsteered image with the same seed")
    g.add_argument("--save-maps", action="store_true",
                   help="also write maps/step_NN.png: at every steered step, each object's cross-attention "
                        "map (what the classifier reads) before and after steering, over the image")
    g.add_argument("--out", default="l2s-out", help="output directory (default: l2s-out)")
    add_dtype_arg(g)
    add_device_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2s.files import output_lock
    from l2s.parsing import parse_prompt

    started = time.perf_counter()
    check_sampling_args(args)          # every option, before any work
    relations = parse_relations(args.relations) if args.relations else None
    # Reject a bad prompt (or relations it does not hold) before loading any model.
    if relations:
        given_parse(args.prompt, relations)
    else:
        parse_prompt(args.prompt)
    with output_lock(args.out):        # --out writable (and ours alone) before any model loads
        return _generate(args, relations, started)


def _generate(args: argparse.Namespace, relations, started: float) -> int:
    from l2s.evaluation import probability_plot
    from l2s.evaluation.attention_pictures import save_attention_grids, step_notes
    from l2s.pipelines.attention_maps import MapRecorder
    from l2s.steer import disabled_by

    steerer, source = load_steerer(args)
    if relations:
        steer_given_relations(steerer, lambda prompt: relations)
    print(f"l2s: model: {source}", file=sys.stderr)
    kwargs = dict(num_inference_steps=args.steps, height=args.height, width=args.width,
                  guidance_scale=args.guidance, seed=args.seed, progress=not args.quiet)
    recorder = MapRecorder(steerer) if args.save_maps else None
    result = steerer(args.prompt, steer=not args.no_steer, schedule=args.schedule, **kwargs)
    if recorder is not None:
        recorder.detach()
    plan, result.outcome = result.plan, disabled_by(result.outcome, "--no-steer")
    steered = result.outcome.steered   # what ran: no update kept means no steered image
    if not plan.steered:
        print(f"l2s: {plan.parsed.describe()}", file=sys.stderr)
    elif result.outcome.warning() and not args.no_steer:
        print(f"l2s: warning: {result.outcome.warning()}", file=sys.stderr)
    out = Path(args.out)
    remove_stale_outputs(out)
    result.images[0].save(out / "image.png")
    written = ["image.png"]
    report = {"prompt": args.prompt, "relations_from": "--relations" if relations else "parser",
              "model": source, "seed": args.seed, **result.report(), "versions": _versions()}
    if steered and not args.no_baseline:
        baseline = steerer(args.prompt, steer=False, **kwargs)
        baseline.images[0].save(out / "image_unsteered.png")
        _side_by_side(baseline.images[0], result.images[0]).save(out / "comparison.png")
        written += ["image_unsteered.png", "comparison.png"]
        report["timings_s"]["unsteered_total"] = baseline.timings["total"]
    if steered and result.diagnostics.records:
        probability_plot(result.diagnostics.records).save(out / "probability.png")
        written.append("probability.png")
    if recorder is not None and recorder.steps:
        maps = save_attention_grids(result.images[0], recorder.steps, out / "maps",
                                    notes=step_notes(result.diagnostics.records))
        written += [str(path.relative_to(out)) for path in maps]
    report["timings_s"]["command_total"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(wrote_line(out, written + ["report.json"]), file=sys.stderr)
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
