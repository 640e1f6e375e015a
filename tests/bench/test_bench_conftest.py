"""bench/conftest.py: each group's ratios to its baseline, measured in the run, in the JSON and the log; the
bench settings in each saved run's machine_info."""
from __future__ import annotations

import json
from pathlib import Path

pytest_plugins = ["pytester"]

BENCH_CONFTEST = Path(__file__).resolve().parents[2] / "bench" / "conftest.py"

# Two benchmarks of one group, one of them a baseline, and one of a group without a baseline.
BENCHMARKS = """
import pytest

@pytest.mark.parametrize("variant", ["eager-fp32", "compiled"])
def test_classifier_forward_backward(benchmark, variant):
    benchmark.group = "classifier"
    benchmark.pedantic(sum, args=(range(100 if variant == "compiled" else 1000),), rounds=3)

def test_alone(benchmark):
    benchmark.group = "alone"
    benchmark.pedantic(sum, args=(range(10),), rounds=3)
"""


def test_ratios_to_the_group_baseline_are_saved_and_shown(pytester):
    pytester.makeconftest(BENCH_CONFTEST.read_text())
    pytester.makepyfile(test_benchmarks=BENCHMARKS)
    result = pytester.runpytest_subprocess("--benchmark-only", "--benchmark-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    saved = {b["name"]: b for b in json.loads((pytester.path / "out.json").read_text())["benchmarks"]}
    baseline = saved["test_classifier_forward_backward[eager-fp32]"]
    compiled = saved["test_classifier_forward_backward[compiled]"]
    ratio = round(compiled["stats"]["median"] / baseline["stats"]["median"], 3)
    assert compiled["extra_info"] == {"ratio_to": baseline["name"], "ratio": ratio}
    assert baseline["extra_info"] == {"ratio_to": baseline["name"], "ratio": 1.0}
    assert saved["test_alone"]["extra_info"] == {}                  # no baseline in its group: no ratio
    result.stdout.fnmatch_lines([f"classifier: test_classifier_forward_backward[[]compiled[]] {ratio:.3f} x "
                                 "test_classifier_forward_backward[[]eager-fp32[]]"])
    shown = result.stdout.lines
    assert not [line for line in shown if line.startswith(("alone: ", f"classifier: {baseline['name']}"))]


def test_no_ratios_when_benchmarks_are_disabled(pytester):
    pytester.makeconftest(BENCH_CONFTEST.read_text())
    pytester.makepyfile(test_benchmarks=BENCHMARKS)
    result = pytester.runpytest_subprocess("--benchmark-disable", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert "baseline median" not in result.stdout.str()


def test_a_compared_run_of_another_thread_count_warns(pytester, monkeypatch):
    pytester.makeconftest(BENCH_CONFTEST.read_text())
    pytester.makepyfile(test_benchmarks=BENCHMARKS)
    options = ("--benchmark-only", "--benchmark-storage=store", "-p", "no:cacheprovider")
    monkeypatch.setenv("L2S_BENCH_THREADS", "1")
    pytester.runpytest_subprocess(*options, "--benchmark-autosave").assert_outcomes(passed=3)
    (saved,) = (pytester.path / "store").rglob("0001_*.json")
    assert json.loads(saved.read_text())["machine_info"]["l2s_bench"]["threads"] == 1
    monkeypatch.setenv("L2S_BENCH_THREADS", "2")
    result = pytester.runpytest_subprocess(*options, "--benchmark-compare")
    result.assert_outcomes(passed=3)
    result.stderr.fnmatch_lines(['*machine_info is different*"threads": 2*"threads": 1*'])
