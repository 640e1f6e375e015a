"""Benchmark-only setup; the shared setup (offline hub, seeded RNGs, marker skips) is ../conftest.py.

Benchmarks compare times across runs, so the thread count is fixed: ``L2S_BENCH_THREADS``
(default 1; on a shared 2-core machine one thread gives far steadier numbers than two).
pytest puts this directory on ``sys.path``, so benchmarks can import ``gpu_flux_dev``'s helpers.

Each group's ratios to its baseline (``BASELINES``: the in-project reference where the group has
one) are taken in the run itself: ``extra_info`` of every benchmark (``ratio``, ``ratio_to``) and
a section of the terminal summary, so a CI log shows them.
"""
from __future__ import annotations

import os

import pytest
import torch

BENCH_THREADS = int(os.environ.get("L2S_BENCH_THREADS", "1"))
torch.set_num_threads(BENCH_THREADS)

# What each group's medians are divided by (same run): the claims of the docs are these ratios.
BASELINES = frozenset({
    "test_classifier_forward_backward[eager-fp32]",       # classifier: eager fp32 vs compiled
    "test_steered_iteration[reference]",                  # iteration: reference mode
    "test_capture_backend_iteration[native]",             # capture: "sdpa twice as fast as native"
    "test_steered_generation[reference-mode-reference]",  # generation: reference mode, published schedule
    "test_steered_batch[1]",                              # batch: one image per call
    "test_explicit_softmax[cpu]", "test_explicit_softmax[cuda]",   # capture op: the explicit softmax
    "test_eager",                                         # plain-step engines: eager
    "test_compiled_gelu[stock]",                          # GELU: inductor's own CPU tanh
})


def baseline_ratios(medians: dict[tuple[str, str], float]) -> dict[tuple[str, str], tuple[str, float]]:
    """``(group, name) -> (baseline name, median / the baseline's median)`` for every benchmark of a
    group whose baseline ran too (the baseline itself included, at 1)."""
    baselines = {group: (name, median) for (group, name), median in medians.items() if name in BASELINES}
    ratios = {}
    for (group, name), median in medians.items():
        if group in baselines:
            baseline, baseline_median = baselines[group]
            ratios[group, name] = (baseline, median / baseline_median)
    return ratios


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Saved with each run, so comparing runs of another thread count, timer or torch warns
    (pytest-benchmark warns when the machine_info of the compared run differs)."""
    timer = config.getoption("benchmark_timer", None)
    machine_info["l2s_bench"] = {"threads": BENCH_THREADS, "timer": str(timer), "torch": torch.__version__}


def _measured(config: pytest.Config) -> list:
    """The benchmarks this run measured (none under ``--benchmark-disable``)."""
    session = getattr(config, "_benchmarksession", None)   # pytest-benchmark's own session object
    return [] if session is None else [bench for bench in session.benchmarks if bench]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session):
    """Record the ratios in ``extra_info`` before pytest-benchmark saves its JSON (it saves here)."""
    measured = _measured(session.config)
    ratios = baseline_ratios({(bench.group, bench.name): bench.stats.median for bench in measured})
    for bench in measured:
        if (bench.group, bench.name) in ratios:
            baseline, ratio = ratios[bench.group, bench.name]
            bench.extra_info.update(ratio_to=baseline, ratio=round(ratio, 3))
    return (yield)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """One line per benchmark with a ratio: what the docs' speed claims are, measured in this run."""
    rows = [bench for bench in _measured(config) if bench.extra_info.get("ratio_to") not in (None, bench.name)]
    if not rows:
        return
    terminalreporter.section("median / the group's baseline median (this run)", sep="-")
    for bench in sorted(rows, key=lambda bench: (bench.group, bench.extra_info["ratio"])):
        info = bench.extra_info
        terminalreporter.write_line(f"{bench.group}: {bench.name} {info['ratio']:.3f} x {info['ratio_to']}")
