"""GRPO on a single shapes prompt (diagnostic D1 of experiments/notebook/grpo.md), then the
prompt's strict accuracy before and after, paired by seed.

    python experiments/scripts/grpo_one_prompt.py --out RUN_A
    python experiments/scripts/grpo_one_prompt.py --out RUN_B --clip-range 1e-3
    python experiments/scripts/grpo_one_prompt.py --out RUN_A --judge-only   # the table again

Trains with the library loop (``l2s.grpo.train_grpo``: the CLI draws from the whole prompt pool),
the exact strict rule as reward, every other setting as ``l2s shapes grpo``. Rerunning the same
command resumes. Judging runs ``l2s generate --no-steer`` on the base model and on the run's EMA
adapter (same seeds) and reads each image's verdict from its index.json.
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
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip-range", type=float, default=1e-4)
    p.add_argument("--seeds", default="1000-1063", help="judging seeds (l2s generate --seeds)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--judge-only", action="store_true")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    import torch

    from l2s.shapes.rule_reward import RuleReward
    from l2s.shapes.tuning import train_shapes_grpo

    torch.set_num_threads(1)
    first, last = (int(x) for x in args.seeds.split("-"))
    train_shapes_grpo(args.out, RuleReward("strict"), prompts=([args.prompt], [args.prompt]),
                      progress=False, epochs=args.epochs, prompts_per_epoch=1, lr=args.lr, clip_range=args.clip_range,
                      eval_seeds=tuple(range(first, last + 1)), eval_every=args.eval_every)


def verdicts(folder: Path, args: argparse.Namespace, lora: Path | None) -> dict[int, bool]:
    """Seed -> strict verdict of the unsteered image, generated once into ``folder``."""
    command = [sys.executable, "-m", "l2s.cli", "generate", args.prompt, "--no-steer", "--seeds", args.seeds,
               "--out", str(folder), "--quiet"] + (["--lora", str(lora)] if lora else [])
    subprocess.run(command, check=True)
    entries = json.loads((folder / "index.json").read_text())["images"]
    return {e["seed"]: e["verdict"]["image"] for e in entries}


def main(argv=None) -> int:
    from scipy.stats import binomtest

    args = parse_args(argv)
    if not args.judge_only:
        train(args)
    base = verdicts(args.out.parent / "base_judged", args, None)
    tuned = verdicts(args.out / "judged", args, args.out / "adapter")
    up = sum(tuned[s] and not base[s] for s in base)
    down = sum(base[s] and not tuned[s] for s in base)
    p = binomtest(up, up + down).pvalue if up + down else 1.0
    result = {"prompt": args.prompt, "seeds": args.seeds, "base": sum(base.values()) / len(base),
              "tuned": sum(tuned.values()) / len(tuned), "right_only_tuned": up, "right_only_base": down,
              "sign_test_p": p, "clip_range": args.clip_range, "lr": args.lr, "epochs": args.epochs}
    (args.out / "judged.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
