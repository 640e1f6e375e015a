"""Steering overhead on the shipped shapes-world model (CPU): steered ÷ unsteered time per schedule.

For every schedule preset (and each ``--modes`` execution mode) it generates the same prompts and
seeds steered and unsteered in one process, one thread, and prints one markdown row per
(mode, schedule) as soon as it is measured: the denoising steps, seconds per image both ways, their
ratio, and the steering forwards per image (a mean: it need not be whole). Both ways sample the
schedule's own step count (the ``fast`` preset samples fewer steps than the model's default), so
the overhead is steering's alone; the unsteered images are timed once per mode and step count.
``--json PATH`` also writes the rows.

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
PROG = "python bench/shapes_overhead.py"
COLUMNS = ("mode", "schedule", "steps", "steered s/img", "unsteered s/img (same steps)",
           "overhead (steered / unsteered)", "steering forwards/img")


def parse_args(argv=None) -> argparse.Namespace:
    from l2s.cli.help import OneLineParser
    from l2s.steer import CPU_MODES, PRESETS

    parser = OneLineParser(prog=PROG, program_name=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per schedule (default 8)")
    parser.add_argument("--schedules", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    # a mode replaying CUDA graphs cannot run on the CPU: refused here, not after a model loaded
    parser.add_argument("--modes", nargs="+", default=["fast"], choices=CPU_MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (one thread: its own work, "
                             "steadier when other jobs share the machine)")
    parser.add_argument("--classifier", type=Path, help="classifier folder (default: the shipped one)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    for option, value in (("--images", args.images), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{option} must be positive, got {value}")
    return args


def seconds_per_image(steerer, n: int, clock=time.perf_counter, **call) -> tuple[float, float]:
    """(seconds per image, mean steering forwards per image) over ``n`` prompt/seed pairs."""
    forwards, started = 0, clock()
    for i in range(n):
        result = steerer(PROMPTS[i % len(PROMPTS)], seed=i, progress=False, **call)
        forwards += len(result.diagnostics.records)
    return (clock() - started) / n, forwards / n


def schedule_steps(steerer, schedule: str) -> int:
    """The denoising steps ``steerer`` samples with preset ``schedule`` (``fast``: fewer than its default)."""
    from l2s.steer import preset_steps

    return preset_steps(schedule, steerer.family, steerer.default_steps())


def measure_mode(mode: str, args: argparse.Namespace):
    """Rows for one execution mode: every schedule steered, against unsteered at the same step count."""
    from l2s.shapes import load_shapes_steerer, steer_shapes_pipeline

    shipped = load_shapes_steerer(classifier=args.classifier)
    steerer = steer_shapes_pipeline(shipped.pipe, shipped.classifier, mode=mode)
    steerer(PROMPTS[0], seed=99, progress=False)           # warm up (the compiled mode compiles here)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    unsteered: dict[int, float] = {}                       # steps -> seconds per image, timed once each
    for schedule in args.schedules:
        steps = schedule_steps(steerer, schedule)
        if steps not in unsteered:
            unsteered[steps], _ = seconds_per_image(steerer, args.images, clock, steer=False, num_inference_steps=steps)
        steered, forwards = seconds_per_image(steerer, args.images, clock, schedule=schedule, num_inference_steps=steps)
        yield {"mode": mode, "schedule": schedule, "steps": steps, "steered_s": steered,
               "unsteered_s": unsteered[steps], "overhead": steered / unsteered[steps], "steering_forwards": forwards}


def main(argv=None) -> int:
    from l2s.cli.checks import check_output_file
    from l2s.errors import L2SError

    args = parse_args(argv)
    try:
        if args.json is not None:         # checked before minutes of measuring, not after
            check_output_file(args.json, "--json")
        return measure(args)
    except L2SError as error:         # a classifier that does not load, ...: one line, as the l2s CLI
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


def measure(args: argparse.Namespace) -> int:
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
            print(f"| {row['mode']} | {row['schedule']} | {row['steps']} | {row['steered_s']:.3f} | "
                  f"{row['unsteered_s']:.3f} | {row['overhead']:.2f} | {row['steering_forwards']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
