"""Steered time per image of the shapes model per classifier (e.g. classifiers of the first K
blocks against the all-layers one), in one process, interleaved. Prints one table.

    python experiments/scripts/shapes_layers_timing.py --classifiers all=l2s/shapes/assets/classifier,k1=RUN/k1/best

Every round steers the same development prompts (prompt seed 7, never the bench's) with each
classifier in turn, then generates them unsteered; the table gives per classifier the median over
rounds of seconds per image, steering iterations per image, the steering overhead (steered /
unsteered, same round) and the seconds per steering iteration ((steered - unsteered) / iterations).
Seconds are the process's CPU time (one thread: the work done, steady on a CPU shared with other
jobs); wall seconds are reported beside them. How `experiments/notebook/layers-k.md` times
steering vs K.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_classifiers(text: str) -> dict[str, Path]:
    """``name=DIR,name=DIR`` -> {name: DIR}, in the given order."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--classifiers: expected name=DIR,name=DIR, got {text!r}")
    return {name: Path(path) for name, path in pairs}


def time_images(steerer, prompts: list[str], seed: int, schedule: str, steer: bool) -> tuple[float, float, float]:
    """(CPU seconds per image, wall seconds per image, steering iterations per image) of ``prompts``."""
    cpu, wall, iterations = time.process_time(), time.perf_counter(), 0
    for prompt in prompts:
        result = steerer(prompt, seed=seed, schedule=schedule, steer=steer, progress=False)
        iterations += len(result.diagnostics.records) if steer else 0
    n = len(prompts)
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n, iterations / n


def measure(classifiers: dict[str, Path], prompts: list[str], args) -> dict[str, dict]:
    """Per classifier: the per-round times and iterations, and the rounds' unsteered times."""
    from l2s.classifier import RelationClassifier
    from l2s.shapes import load_shapes_pipeline, shipped_assets, steer_shapes_pipeline

    pipe = load_shapes_pipeline(args.model or shipped_assets().pipeline)
    steerers = {name: steer_shapes_pipeline(pipe, RelationClassifier.load(path)) for name, path in classifiers.items()}
    first = next(iter(steerers.values()))
    for steerer in steerers.values():                     # warm-up: one image each
        steerer(prompts[0], seed=args.seed, schedule=args.schedule, progress=False)
    rows = {name: {"seconds": [], "wall": [], "iterations": [], "plain": []} for name in steerers}
    for round_index in range(args.rounds):
        plain, _, _ = time_images(first, prompts, args.seed, args.schedule, steer=False)
        for name, steerer in steerers.items():
            seconds, wall, iterations = time_images(steerer, prompts, args.seed, args.schedule, steer=True)
            for key, value in (("seconds", seconds), ("wall", wall), ("iterations", iterations), ("plain", plain)):
                rows[name][key].append(value)
            print(f"round {round_index + 1}: {name} {seconds:.3f} CPU s/image ({wall:.3f} wall), "
                  f"{iterations:.1f} iterations/image (unsteered {plain:.3f})", file=sys.stderr, flush=True)
    return rows


def table(rows: dict[str, dict], classifiers: dict[str, Path]) -> str:
    from l2s.classifier import RelationClassifier

    lines = ["| classifier | layers read | steered CPU s/image | unsteered CPU s/image | overhead | iterations/image "
             "| CPU s/iteration | vs first row | steered wall s/image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = None
    for name, row in rows.items():
        layout = RelationClassifier.load(classifiers[name]).config.layer_layout
        seconds, plain = statistics.median(row["seconds"]), statistics.median(row["plain"])
        iterations = statistics.median(row["iterations"])
        per_iteration = (seconds - plain) / iterations if iterations else float("nan")
        base = base or seconds
        lines.append(f"| {name} | {len(layout) if layout else 'all'} | {seconds:.3f} | {plain:.3f} | "
                     f"{seconds / plain:.2f}x | {iterations:.1f} | {per_iteration:.4f} | {seconds / base:.2f}x | "
                     f"{statistics.median(row['wall']):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifiers", required=True, help="name=DIR,... (the first row is the reference)")
    p.add_argument("--model", type=Path, help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-seed", type=int, default=7)
    p.add_argument("--seed", type=int, default=0, help="image seed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--schedule", default="reference")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, help="also write the table here (and the raw times as .json)")
    args = p.parse_args(argv)
    import torch

    from l2s.shapes import shapes_position_prompts

    torch.set_num_threads(args.threads)
    classifiers = parse_classifiers(args.classifiers)
    prompts = [spec.prompt for spec in shapes_position_prompts(n=args.prompts, seed=args.prompt_seed)]
    rows = measure(classifiers, prompts, args)
    text = table(rows, classifiers)
    print(text)
    if args.results:
        command = "python experiments/scripts/shapes_layers_timing.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.results.write_text(f"Generated by:\n\n    {command}\n\n{text}\n")
        args.results.with_suffix(".json").write_text(json.dumps(
            {"command": command, "classifiers": {k: str(v) for k, v in classifiers.items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
