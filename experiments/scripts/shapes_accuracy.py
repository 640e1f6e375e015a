"""Spatial accuracy of the shapes-world model, base vs steered (thin wrapper of `l2s shapes bench`).

    python experiments/scripts/shapes_accuracy.py [--scale 0.5] [--out /tmp/shapes-bench]

writes experiments/results/shapes_accuracy.md (+ .json) and prints the table, then the project's
targets against it (`shapes_targets.py`) into experiments/results/shapes_accuracy_targets.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from l2s.cli.shapes_bench import bench_main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_targets import main as targets_main  # noqa: E402

# The shipped model's table lives with the benchmarks, where the README cites it.
RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "shapes_accuracy.md"
TARGETS = Path(__file__).resolve().parents[1] / "results" / "shapes_accuracy_targets.md"

if __name__ == "__main__":
    argv = sys.argv[1:]
    shipped = "--results" not in argv      # the shipped table: its targets are committed beside it
    if shipped:
        argv += ["--results", str(RESULTS)]
    status = bench_main(argv)
    results = Path(argv[argv.index("--results") + 1]).with_suffix(".json")
    sys.exit(status or targets_main([str(results), *(["--out", str(TARGETS)] if shipped else [])]))
