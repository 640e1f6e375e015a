"""GRPO on one shapes prompt or a few, each seen every epoch (diagnostics D1-D3 of
experiments/notebook/grpo.md), then each prompt's strict accuracy before and after, paired by seed,
and the same for held-out prompts never trained.

    python experiments/scripts/grpo_one_prompt.py --out RUN_A
    python experiments/scripts/grpo_one_prompt.py --out RUN_B --clip-range 1e-3
    python experiments/scripts/grpo_one_prompt.py --out RUN_C --prompt P1 --prompt P2 --held-out P3
    python experiments/scripts/grpo_one_prompt.py --out RUN_A --judge-only   # the table again
    python experiments/scripts/grpo_one_prompt.py --out RUN_D --sde-steps 3 --keep-evaluated --epochs 120
    python experiments/scripts/grpo_one_prompt.py --out RUN_D --judge-only --judge-epoch 60
    python experiments/scripts/grpo_one_prompt.py --out RUN_E --reward spatialscore --clip-range 1e-3 --epochs 120

Trains with the library loop (``l2s.grpo.train_grpo``: the CLI draws from the whole prompt pool),
the exact strict rule as reward by default (``--reward``), every other setting as ``l2s shapes
grpo``. Rerunning the same command resumes. Judging runs ``l2s generate --no-steer`` on the base
model and on the run's EMA adapter (same seeds) and reads each image's verdict from its index.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "a red circle to the left of a blue square"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt", action="append", help=f"a trained prompt (repeat; default {PROMPT!r})")
    p.add_argument("--held-out", action="append", default=[], help="a judged, never trained prompt (repeat); "
                   "the run's dev monitor judges these (default: the trained prompts)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip-range", type=float, default=1e-4)
    p.add_argument("--seeds", default="1000-1063", help="judging seeds (l2s generate --seeds)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--sde-steps", type=int, help="SDE (trained) steps from the start (default: all but the last)")
    p.add_argument("--keep-evaluated", action="store_true", help="keep every judged epoch's adapter")
    p.add_argument("--reward", default="rule", help="'rule' (the exact strict rule), 'spatialscore' (the shipped "
                   "SpatialScore) or a SpatialScore folder, as 'l2s shapes grpo --reward'")
    p.add_argument("--judge-only", action="store_true")
    p.add_argument("--judge-epoch", type=int, help="judge this epoch's kept adapter (default: the last)")
    args = p.parse_args(argv)
    args.prompt = args.prompt or [PROMPT]
    return args


def train(args: argparse.Namespace) -> None:
    import torch

    from l2s.reward.identity import reward_identity
    from l2s.shapes.tuning import load_shapes_reward, train_shapes_grpo

    torch.set_num_threads(1)
    first, last = (int(x) for x in args.seeds.split("-"))
    dev = args.held_out or args.prompt
    reward = load_shapes_reward(args.reward, what="--reward")
    train_shapes_grpo(args.out, reward, prompts=(list(args.prompt), list(dev)),
                      progress=False, epochs=args.epochs, prompts_per_epoch=len(args.prompt), lr=args.lr,
                      clip_range=args.clip_range, sde_steps=args.sde_steps, keep_evaluated=args.keep_evaluated,
                      eval_seeds=tuple(range(first, last + 1)), eval_every=args.eval_every,
                      reward_name=reward_identity(args.reward))


def verdicts(folder: Path, prompt: str, args: argparse.Namespace, lora: Path | None) -> dict[int, bool]:
    """Seed -> strict verdict of ``prompt``'s unsteered image, generated once into ``folder``."""
    command = [sys.executable, "-m", "l2s.cli", "generate", prompt, "--no-steer", "--seeds", args.seeds,
               "--out", str(folder), "--quiet"] + (["--lora", str(lora)] if lora else [])
    subprocess.run(command, check=True)
    entries = json.loads((folder / "index.json").read_text())["images"]
    return {e["seed"]: e["verdict"]["image"] for e in entries}


def one_of_each(folder: Path, prompt: str, rule: dict[int, bool]) -> dict[int, bool]:
    """Seed -> the rule's verdict and every object of ``prompt`` seen exactly once (the GenEval
    rule passes an image with an extra copy of an object; D7's hack)."""
    from PIL import Image

    from l2s.shapes import ShapesDetector
    from l2s.shapes.reward_prompts import parse_chain

    detector, names = ShapesDetector(), parse_chain(prompt).names
    entries = json.loads((folder / "index.json").read_text())["images"]
    return {e["seed"]: rule[e["seed"]] and all(detector.count(Image.open(folder / e["folder"] / "image.png"), name) == 1
                                               for name in names) for e in entries}


def paired(base: list[dict[int, bool]], tuned: list[dict[int, bool]]) -> dict:
    """Accuracies and the sign test over (prompt, seed) pairs of ``base`` vs ``tuned``."""
    from scipy.stats import binomtest

    pairs = [(b[s], t[s]) for b, t in zip(base, tuned) for s in b]
    up = sum(t and not b for b, t in pairs)
    down = sum(b and not t for b, t in pairs)
    return {"base": sum(b for b, _ in pairs) / len(pairs), "tuned": sum(t for _, t in pairs) / len(pairs),
            "right_only_tuned": up, "right_only_base": down,
            "sign_test_p": binomtest(up, up + down).pvalue if up + down else 1.0}


def judge(prompts: list[str], args: argparse.Namespace) -> dict:
    """Per-prompt and pooled paired verdicts; each prompt's images in its own folders (a single
    prompt keeps D1/D2's folder names)."""
    def folders(i: int) -> tuple[Path, Path]:
        suffix = "" if len(args.prompt) == 1 and not args.held_out else f"_{i}"
        epoch = f"_e{args.judge_epoch:04d}" if args.judge_epoch is not None else ""
        return args.out.parent / f"base_judged{suffix}", args.out / f"judged{epoch}{suffix}"

    adapter = args.out / "adapter"
    if args.judge_epoch is not None:
        adapter = args.out / "evaluated" / f"epoch-{args.judge_epoch:04d}"

    everything = args.prompt + args.held_out
    base, tuned, base_once, tuned_once = [], [], [], []
    for prompt in prompts:
        base_dir, tuned_dir = folders(everything.index(prompt))
        base.append(verdicts(base_dir, prompt, args, None))
        tuned.append(verdicts(tuned_dir, prompt, args, adapter))
        base_once.append(one_of_each(base_dir, prompt, base[-1]))
        tuned_once.append(one_of_each(tuned_dir, prompt, tuned[-1]))
    return {"pooled": paired(base, tuned),
            "per_prompt": {p: paired([b], [t]) for p, b, t in zip(prompts, base, tuned)},
            "one_of_each": {"pooled": paired(base_once, tuned_once),
                            "per_prompt": {p: paired([b], [t]) for p, b, t in zip(prompts, base_once, tuned_once)}}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.judge_only:
        train(args)
    result = {"seeds": args.seeds, "clip_range": args.clip_range, "lr": args.lr, "epochs": args.epochs,
              "sde_steps": args.sde_steps, "judged_epoch": args.judge_epoch, "trained": judge(args.prompt, args)}
    if args.held_out:
        result["held_out"] = judge(args.held_out, args)
    name = "judged.json" if args.judge_epoch is None else f"judged_e{args.judge_epoch:04d}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
