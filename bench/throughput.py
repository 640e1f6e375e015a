"""Throughput on CPU: images per second against batch size, and ``l2s eval`` spread over processes.

``batch``: the shipped shapes model and the tiny random FLUX, plain (unsteered) and steered, B
images per pipeline call for every B of ``--batch-sizes``: B different prompts, each with its own
seed (one call, as ``l2s eval`` batches). Each row makes ``--images`` images (rounded up to whole
batches) after one warm-up call, and prints a Markdown row as soon as it is measured: seconds per
image, images per second and the speed-up over the first batch size measured of the same model and
kind (the cell names it: batch 1 when ``--batch-sizes`` starts with 1). ``--timer
cpu`` counts this process's CPU seconds instead of wall time (steadier on a shared machine with
one thread). A batch the pipeline refuses prints a row saying why instead of a number.

``eval``: the same ``l2s eval`` command in 1 process and spread over N (``torchrun --standalone
--nproc_per_node N``), each from an empty output folder; the wall time of the whole command
(imports and model loading included) and of the run itself (``summary.json``'s ``wall_time_s``),
images per second, the speed-up over the first row, and whether the summary equals the first
row's (timings left out).

    python bench/throughput.py batch                                  # both models, both kinds, B = 1..16
    python bench/throughput.py batch --models shapes --kinds plain --batch-sizes 1 4 16
    python bench/throughput.py eval --processes 1 2 -- --n-prompts 64 --seeds 0-1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ("a red circle to the left of a blue square", "a green triangle above a yellow diamond",
           "a blue square to the right of a red circle", "a yellow diamond below a green triangle")
PROG = "python bench/throughput.py"
BATCH_COLUMNS = ("model", "kind", "batch", "images", "s/image", "images/s", "speed-up (vs first batch measured)")
EVAL_COLUMNS = ("processes", "threads each", "images", "command wall s", "run wall s", "images/s (command)",
                "images/s (run)", "vs first row (command)", "same summary as first row")


def parse_args(argv=None) -> argparse.Namespace:
    from l2s.cli.help import OneLineParser
    from l2s.steer import CPU_MODES

    parser = OneLineParser(prog=PROG, program_name=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    batch = sub.add_parser("batch", help="images per second against batch size")
    batch.add_argument("--models", nargs="+", default=["shapes", "tiny-flux"], choices=["shapes", "tiny-flux"])
    batch.add_argument("--kinds", nargs="+", default=["plain", "steered"], choices=["plain", "steered"])
    batch.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    batch.add_argument("--images", type=int, default=16, help="images per row (default 16)")
    batch.add_argument("--threads", type=int, default=1)
    # a mode replaying CUDA graphs cannot run on the CPU: refused here, not after a model loaded
    batch.add_argument("--mode", default="fast", choices=CPU_MODES, help="steering execution mode (default fast)")
    batch.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                       help="wall time, or this process's CPU time (default wall)")
    batch.add_argument("--json", type=Path, help="also write the rows here")
    spread = sub.add_parser("eval", help="l2s eval in 1 process against N processes")
    spread.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    spread.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    spread.add_argument("--work", type=Path, default=Path("out/throughput"), help="output folders go here")
    spread.add_argument("--json", type=Path, help="also write the rows here")
    spread.add_argument("eval_args", nargs="*", help="after --: l2s eval options (--out is set here)")
    args = parser.parse_args(argv)
    problem = count_problem(args) or json_problem(args.json)
    if problem is not None:
        parser.error(problem)
    return args


def json_problem(path: Path | None) -> str | None:
    """Why ``--json`` cannot be written (None: it can), checked before minutes of measuring."""
    from l2s.cli.checks import check_output_file
    from l2s.errors import UsageError

    try:
        if path is not None:
            check_output_file(path, "--json")
    except UsageError as error:
        return str(error)
    return None


def count_problem(args: argparse.Namespace) -> str | None:
    """The first count option below 1, as one line naming it (None: all fine); before a model loads."""
    counts = {"--threads": [args.threads]}
    if args.what == "batch":
        counts.update({"--images": [args.images], "--batch-sizes": args.batch_sizes})
    else:
        counts["--processes"] = args.processes
    for option, values in counts.items():
        if any(v < 1 for v in values):
            return f"{option} must be positive, got {' '.join(map(str, values))}"
    return None


def _table_head(columns) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)


# ---------------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------------

def load_model(name: str, mode: str = "fast"):
    """The steering pipeline of a ``--models`` name, in execution ``mode``."""
    if name == "shapes":
        from l2s.shapes import load_shapes_steerer

        return load_shapes_steerer(mode=mode)
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
    from l2s.pipelines import wrap_pipeline

    pipe = tiny_flux_pipeline(seed=0)
    return wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=0), mode=mode)


def make_batch(steerer, batch: int, call: int, steered: bool) -> int:
    """One pipeline call of ``batch`` images, each of its own prompt and seed; the images it made."""
    first = call * batch
    prompts = [PROMPTS[(first + i) % len(PROMPTS)] for i in range(batch)]
    result = steerer(prompts, seed=[first + i for i in range(batch)], steer=steered, progress=False)
    return len(result.images)


def measure_batch(steerer, batch: int, images: int, steered: bool, clock=time.perf_counter) -> dict:
    """Seconds per image over ``images`` images (whole batches) after one warm-up call, or why not."""
    from l2s.errors import L2SError

    try:
        made = make_batch(steerer, batch, 1_000, steered)
    except (L2SError, NotImplementedError, ValueError) as error:
        return {"skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
    if made != batch:
        return {"skipped": f"asked for {batch} images, the pipeline made {made}"}
    calls = -(-images // batch)
    started = clock()
    made = sum(make_batch(steerer, batch, call, steered) for call in range(calls))
    seconds = clock() - started
    return {"images": made, "s_per_image": seconds / made, "images_per_s": made / seconds}


def batch_rows(args: argparse.Namespace):
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    for name in args.models:
        steerer = load_model(name, args.mode)
        for kind in args.kinds:
            first = None        # the first batch size measured (not refused): each row's base
            for batch in args.batch_sizes:
                row = {"model": name if args.mode == "fast" else f"{name} ({args.mode})", "kind": kind, "batch": batch,
                       **measure_batch(steerer, batch, args.images, kind == "steered", clock)}
                if "images_per_s" in row:
                    first = first or row
                    row["speedup"] = row["images_per_s"] / first["images_per_s"]
                    row["speedup_vs_batch"] = first["batch"]
                yield row


def print_batch_row(row: dict) -> None:
    if "skipped" in row:
        cells = [row["model"], row["kind"], str(row["batch"]), "-", "-", "-", f"skipped: {row['skipped']}"]
    else:
        cells = [row["model"], row["kind"], str(row["batch"]), str(row["images"]), f"{row['s_per_image']:.3f}",
                 f"{row['images_per_s']:.2f}", f"{row['speedup']:.2f}x vs batch {row['speedup_vs_batch']}"]
    print("| " + " | ".join(cells) + " |", flush=True)


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------

def eval_command(processes: int, eval_args: list[str], out: Path) -> list[str]:
    """``l2s eval`` in one process, or under ``torchrun`` on ``processes``."""
    launcher = [sys.executable, "-m", "l2s.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), "-m", "l2s.cli"]
    return [*launcher, "eval", *eval_args, "--quiet", "--out", str(out)]


def eval_rows(args: argparse.Namespace):
    from l2s.evaluation import comparable_summary

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    first = None
    for processes in args.processes:
        out = args.work / f"eval-{processes}p"
        shutil.rmtree(out, ignore_errors=True)
        command = eval_command(processes, args.eval_args, out)
        print(f"$ OMP_NUM_THREADS={args.threads} {' '.join(command)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads((out / "summary.json").read_text())
        images = sum(mode["n_images"] for mode in summary["modes"].values())
        row = {"processes": processes, "threads": args.threads, "images": images, "command_s": wall,
               "run_s": summary["wall_time_s"], "summary": comparable_summary(summary)}
        first = first or row
        row["speedup"] = first["command_s"] / wall
        row["same_summary"] = row["summary"] == first["summary"]
        yield row


def print_eval_row(row: dict) -> None:
    cells = [str(row["processes"]), str(row["threads"]), str(row["images"]), f"{row['command_s']:.1f}",
             f"{row['run_s']:.1f}", f"{row['images'] / row['command_s']:.2f}", f"{row['images'] / row['run_s']:.2f}",
             f"{row['speedup']:.2f}x", "yes" if row["same_summary"] else "NO"]
    print("| " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    # what the batch rows' seconds are: a table read later must say (eval rows are wall time, threads per row)
    timing = f", {args.threads} thread(s), {args.timer} time" if args.what == "batch" else ""
    print(f"CPU, torch {torch.__version__}, {os.cpu_count()} cores{timing}, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    if args.what == "batch":
        torch.set_num_threads(args.threads)
        columns, rows, show = BATCH_COLUMNS, batch_rows(args), print_batch_row
    else:
        columns, rows, show = EVAL_COLUMNS, eval_rows(args), print_eval_row
    _table_head(columns)
    kept = []
    for row in rows:
        show(row)
        kept.append(row)
    if args.json:
        args.json.write_text(json.dumps(kept, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
