"""Steering overhead on the shipped shapes-world model (CPU): steered ÷ unsteered time per schedule.

For every schedule preset (and each ``--modes`` execution mode) it generates the same prompts and
seeds steered and unsteered in one process, one thread, and prints one markdown row per
(mode, schedule) as soon as it is measured: seconds per image both ways, their ratio, and the
steering forwards per image. The unsteered images are the same for every schedule, so they are timed
once per mode. ``--json PATH`` also writes the rows.

    python bench/shapes_overhead.py                       # fast mode, every preset, 8 images each
    python bench/shapes_overhead.py --modes fast reference fast+compiled --images 4
    python bench/shapes_overhead.py --timer cpu           # CPU seconds: steadier on a shared machine
    python bench/shapes_overhead.py --classifier RUN/best # another classifier (e.g. of the first K blocks)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PROMPTS = ("a red circle to the left of a blue square", "a green triangle above a yellow diamond",
           "a blue square to the right of a red circle", "a yellow diamond below a green triangle")
COLUMNS = ("mode", "schedule", "steered s/img", "unsteered s/img", "overhead (steered / unsteered)",
           "steering forwards/img")


def parse_args(argv=None) -> argparse.Namespace:
    from l2s.steer import MODES, PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per schedule (default 8)")
    parser.add_argument("--schedules", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--modes", nargs="+", default=["fast"], choices=list(MODES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (one thread: its own work, "
                             "steadier when other jobs share the machine)")
    parser.add_argument("--classifier", type=Path, help="classifier folder (default: the shipped one)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def seconds_per_image(steerer, n: int, clock=time.perf_counter, **call) -> tuple[float, int]:
    """(seconds per image, steering forwards per image) over ``n`` prompt/seed pairs."""
    forwards, started = 0, clock()
    for i in range(n):
        result = steerer(PROMPTS[i % len(PROMPTS)], seed=i, progress=False, **call)
        forwards += len(result.diagnostics.records)
    return (clock() - started) / n, forwards // n


def measure_mode(mode: str, args: argparse.Namespace):
    """Rows for one execution mode: unsteered once, then every schedule steered."""
    from l2s.shapes import load_shapes_steerer, steer_shapes_pipeline

    shipped = load_shapes_steerer(classifier=args.classifier)
    steerer = steer_shapes_pipeline(shipped.pipe, shipped.classifier, mode=mode)
    steerer(PROMPTS[0], seed=99, progress=False)           # warm up (the compiled mode compiles here)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    unsteered, _ = seconds_per_image(steerer, args.images, clock, steer=False)
    for schedule in args.schedules:
        steered, forwards = seconds_per_image(steerer, args.images, clock, schedule=schedule)
        yield {"mode": mode, "schedule": schedule, "steered_s": steered, "unsteered_s": unsteered,
               "overhead": steered / unsteered, "steering_forwards": forwards}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"shipped shapes model, classifier {args.classifier or 'shipped'}, CPU, {args.threads} thread(s), "
          f"{args.images} images per row, "
          f"{args.timer} time, torch {torch.__version__}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    rows = []
    for mode in args.modes:
        for row in measure_mode(mode, args):
            rows.append(row)
            print(f"| {row['mode']} | {row['schedule']} | {row['steered_s']:.3f} | {row['unsteered_s']:.3f} | "
                  f"{row['overhead']:.2f} | {row['steering_forwards']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
