"""Does a reward model still prefer correct images over the ones a hacked GRPO run made?

Reads two `l2s generate` folders of one prompt (``--base``: the base model's images; ``--tuned``:
a tuned adapter's), keeps the base images that satisfy the prompt (exact rule, strict) and the
tuned images that lack one of its objects (detector), and reports for each reward model the AUC
of the first against the second (1.0: every correct base image scores above every such tuned
image) with both groups' mean scores. ``--hack duplicate``: the base images that satisfy the
prompt with one instance of each object against the tuned images that show an object more than
once (D7's hack).

    python experiments/scripts/reward_hack_check.py --base D6/base_judged --tuned D6/run/judged \
        --model shipped=l2s/shapes/assets/spatial_score --model A=RUN_A/best
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def images_of(folder: Path) -> tuple[list, list[str]]:
    """(PIL images, prompts) of a generate folder, in its index's order."""
    from PIL import Image

    index = json.loads((folder / "index.json").read_text())
    entries = [e for e in index["images"] if (folder / e["folder"] / "image.png").is_file()]
    return ([Image.open(folder / e["folder"] / "image.png").convert("RGB") for e in entries],
            [e["prompt"] for e in entries])


def auc(high, low) -> float:
    """Share of (high, low) pairs ordered high > low, ties half (the Mann-Whitney AUC)."""
    pairs = [(h > l) + 0.5 * (h == l) for h in high for l in low]
    return sum(pairs) / len(pairs)


def run(args) -> dict:
    import torch

    from l2s.reward import load_reward_model
    from l2s.shapes import ShapesDetector
    from l2s.shapes.reward_prompts import parse_chain
    from l2s.shapes.rule_reward import RuleReward

    torch.set_num_threads(args.threads)
    rule, detector = RuleReward(), ShapesDetector()
    base, base_prompts = images_of(args.base)
    tuned, tuned_prompts = images_of(args.tuned)
    def counts(image, prompt) -> list[int]:
        return [detector.count(image, name) for name in parse_chain(prompt).names]

    right = [i for i, v in enumerate(rule(base, base_prompts).tolist()) if v == 1.0
             and (args.hack == "missing" or max(counts(base[i], base_prompts[i])) == 1)]
    if args.hack == "missing":
        missing = [i for i, (image, prompt) in enumerate(zip(tuned, tuned_prompts))
                   if any(d is None for d in detector.detect(image, list(parse_chain(prompt).names)).values())]
    else:
        missing = [i for i, (image, prompt) in enumerate(zip(tuned, tuned_prompts)) if max(counts(image, prompt)) > 1]
    out = {"base": str(args.base), "tuned": str(args.tuned), "hack": args.hack, "base_right": len(right),
           f"tuned_{args.hack}": len(missing), "models": {}}
    for name, path in (m.split("=", 1) for m in args.model):
        scorer = load_reward_model(path)
        high = scorer([base[i] for i in right], [base_prompts[i] for i in right]).tolist()
        low = scorer([tuned[i] for i in missing], [tuned_prompts[i] for i in missing]).tolist()
        out["models"][name] = {"path": path, "auc": auc(high, low) if high and low else None,
                               "mean_base_right": sum(high) / len(high) if high else None,
                               f"mean_tuned_{args.hack}": sum(low) / len(low) if low else None}
    return out


def main(argv=None) -> int:
    from l2s.errors import L2SError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, type=Path, help="the base model's l2s generate folder")
    p.add_argument("--tuned", required=True, type=Path, help="the tuned adapter's l2s generate folder")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a reward model (repeat)")
    p.add_argument("--hack", choices=("missing", "duplicate"), default="missing",
                   help="tuned images that lack an object (default) or show one more than once")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=None, help="also write this JSON file")
    args = p.parse_args(argv)
    for folder in (args.base, args.tuned):   # before any model loads: a wrong folder is one line
        if not (folder / "index.json").is_file():
            p.exit(2, f"{p.prog}: error: {folder} is no 'l2s generate' folder of several images (index.json missing)\n")
    if bad := next((m for m in args.model if "=" not in m), None):
        p.exit(2, f"{p.prog}: error: --model takes NAME=DIR, got {bad!r}\n")
    try:   # a missing or damaged reward model: one line, not a traceback
        results = run(args)
    except L2SError as error:
        p.exit(2, f"{p.prog}: error: {error}\n")
    text = json.dumps(results, indent=2)
    if args.results:
        args.results.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
