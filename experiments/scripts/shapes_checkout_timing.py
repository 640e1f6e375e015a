"""CPU seconds per steered image of the shipped shapes model across code checkouts, classifiers
and execution modes: each configuration in its own process, rounds interleaved, one thread.

    python experiments/scripts/shapes_checkout_timing.py --rounds 3 --json OUT.json \
        --config old=/tmp/code_50b519b,shipped,fast --config now=.,shipped,fast \
        --config now-k4=.,RUN/k4/best,fast+compiled

A config is NAME=CODE_DIR,CLASSIFIER,MODE[,ENGINE] (CLASSIFIER "shipped": that checkout's shipped
one; ENGINE: the plain steps' engine, left out for the checkout's default).
Every process loads the model, makes one untimed warm-up image (compiles, for the compiled mode),
then times 8 steered images with the published schedule and the same 8 unsteered (the prompts of
`bench/shapes_overhead.py`, seeds 0-1). The table gives per config the median over rounds and the
ratio to the first config's median. How `experiments/notebook/layers-k.md` compares a named K
with the issue's starting point.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ("a red circle to the left of a blue square", "a green triangle above a yellow diamond",
           "a blue square to the right of a red circle", "a yellow diamond below a green triangle")
SEEDS = (0, 1)


def child(classifier: str, mode: str, engine: str = "auto") -> dict:
    """One process's measurement (run inside the checkout given by PYTHONPATH)."""
    import torch

    from l2s.shapes import load_shapes_steerer, steer_shapes_pipeline

    torch.set_num_threads(1)
    shipped = load_shapes_steerer(classifier=None if classifier == "shipped" else classifier)
    steerer = steer_shapes_pipeline(shipped.pipe, shipped.classifier, mode=mode,
                                    **({} if engine == "auto" else {"engine": engine}))
    steerer(PROMPTS[0], seed=99, progress=False)                    # warm-up (compiles)
    times = {}
    for steer in (True, False):
        started = time.process_time()
        for prompt in PROMPTS:
            for seed in SEEDS:
                steerer(prompt, seed=seed, steer=steer, progress=False)
        times["steered" if steer else "unsteered"] = (time.process_time() - started) / (len(PROMPTS) * len(SEEDS))
    import l2s
    return {**times, "l2s": str(Path(l2s.__file__).parent)}


def parse_config(text: str) -> tuple[str, Path, str, str, str]:
    try:
        name, rest = text.split("=", 1)
        code, classifier, mode, *engine = rest.split(",")
        (engine,) = engine or ["auto"]
    except ValueError:
        raise SystemExit(f"--config: expected NAME=CODE_DIR,CLASSIFIER,MODE[,ENGINE], got {text!r}") from None
    return name, Path(code).resolve(), classifier, mode, engine


def run_child(code: Path, classifier: str, mode: str, engine: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as cwd:        # never the checkout's folder: python -m puts it first
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", classifier, mode, engine],
                              env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed ({code}, {classifier}, {mode}, {engine}):\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if not row["l2s"].startswith(str(code)):
        raise SystemExit(f"l2s came from {row['l2s']}, not {code}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("CLASSIFIER", "MODE", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    configs = [parse_config(text) for text in args.config]
    rows = {name: [] for name, *_ in configs}
    for round_index in range(args.rounds):
        for name, code, classifier, mode, engine in configs:
            rows[name].append(run_child(code, classifier, mode, engine))
            print(f"round {round_index + 1} {name}: {rows[name][-1]['steered']:.3f} s steered, "
                  f"{rows[name][-1]['unsteered']:.3f} s unsteered", file=sys.stderr, flush=True)
    first = statistics.median(r["steered"] for r in rows[configs[0][0]])
    print("| config | code | classifier | mode | engine | steered CPU-s/img (rounds) | median | ÷ first | unsteered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, code, classifier, mode, engine in configs:
        steered = [r["steered"] for r in rows[name]]
        median = statistics.median(steered)
        print(f"| {name} | {code.name} | {classifier} | {mode} | {engine} | {' / '.join(f'{s:.3f}' for s in steered)} | "
              f"{median:.3f} | {median / first:.2f} | {statistics.median(r['unsteered'] for r in rows[name]):.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"configs": [[n, str(c), k, m, e] for n, c, k, m, e in configs], "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
