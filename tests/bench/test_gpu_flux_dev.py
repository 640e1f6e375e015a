"""bench/gpu_flux_dev.py on the CPU (``--tiny``): every row written as measured, one change per row,
a responsive classifier, early exit, a time budget, and a run from a copy of the checkout that
needs no spaCy."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2s.steer.presets import schedule_preset

from .scripts import loaded_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_flux_dev.py"
COLUMNS = ["resolution", "measurement", "variant", "time (ms)", "speed-up", "peak extra memory (GiB)",
           "transformer forwards", "notes"]
QUICK = ["--tiny", "--no-compile", "--repeats", "1", "--warmup", "0"]
HELP_HINT = " (see 'python bench/gpu_flux_dev.py --help')"      # the end of every error line


@pytest.fixture(scope="module")
def script():
    yield from loaded_script("gpu_flux_dev.py")


def run_tiny(script, tmp_path: Path, capsys, *extra: str) -> tuple[str, list[dict], list[dict]]:
    """Run the script in-process; returns the report, its table rows as dicts and its JSON lines."""
    threads = torch.get_num_threads()
    try:
        assert script.main([*QUICK, "--out", str(tmp_path), *extra]) == 0
    finally:
        torch.set_num_threads(threads)          # --tiny pins one thread; leave the session as it was
    (report_path,) = tmp_path.glob("tiny_*.md")
    report = report_path.read_text()
    printed = capsys.readouterr().out
    lines = [line for line in report.splitlines() if line.startswith("|")]
    assert all(line in printed for line in lines)   # what is printed is what is written
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    records = [json.loads(line) for line in report_path.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == [r["variant"] for r in rows]
    return report, rows, records


def check_speed_ups(rows: list[dict]) -> None:
    """Each speed-up is the named row's time (same resolution and measurement) over this row's."""
    for r in rows:
        assert "failed" not in r["notes"] and "NON-FINITE" not in r["notes"], r
        match = re.fullmatch(r"(\d+\.\d\d)x vs (.+)", r["speed-up"])
        if r["speed-up"] in ("ref", "n/a") or match is None:
            assert r["speed-up"] in ("ref", "n/a"), r
            continue
        (base,) = [b for b in rows if (b["resolution"], b["measurement"], b["variant"]) ==
                   (r["resolution"], r["measurement"], match.group(2))]
        assert rows.index(base) < rows.index(r)         # measured before, in the same run
        assert float(match.group(1)) == pytest.approx(float(base["time (ms)"]) / float(r["time (ms)"]),
                                                      rel=0.02, abs=0.01)


def test_rows_isolate_one_change_each(script, tmp_path, capsys):
    report, rows, records = run_tiny(script, tmp_path, capsys, "--layers", "1", "2", "--presets", "early-exit", "fast")
    check_speed_ups(rows)
    variants = {(r["measurement"].split(" (")[0].split(",")[0], r["variant"]): r for r in rows}
    iteration = "steering iteration"
    assert variants[(iteration, "fast mode (capture sdpa)")]["speed-up"].endswith("vs reference mode")
    for k in (1, 2):
        row = variants[(iteration, f"fast + classifier of the first {k} blocks")]
        assert row["speed-up"].endswith("vs fast mode (capture sdpa)") and row["transformer forwards"] == "1"
    assert variants[("classifier fwd+bwd to maps", "eager bf16")]["speed-up"].endswith("vs eager fp32")
    for name in ("SDPA selector", "native op"):
        assert variants[("capture", name)]["speed-up"].endswith("vs explicit softmax")
    assert all(r["peak_extra"] is None for r in records)     # CPU: no CUDA memory statistics
    assert "l2s from" in report and "command: `python bench/gpu_flux_dev.py --tiny" in report


def test_whole_images_count_every_forward_and_exit_early(script, tmp_path, capsys):
    report, rows, _ = run_tiny(script, tmp_path, capsys, "--no-micro", "--presets", "reference", "early-exit", "fast")
    check_speed_ups(rows)
    images = {r["variant"]: r for r in rows if r["measurement"].startswith("whole image, denoising loop")}
    assert list(images) == ["reference mode, reference schedule", "fast mode, reference schedule",
                            "fast mode, early-exit schedule", "fast mode, fast schedule",
                            "fast + classifier of the first 1 blocks, fast schedule",
                            "fast + classifier of the first 2 blocks, fast schedule"]
    for k in (1, 2):     # the cheapest preset per first-K-blocks classifier, against all blocks
        row = images[f"fast + classifier of the first {k} blocks, fast schedule"]
        assert row["speed-up"].endswith("vs fast mode, fast schedule")
    counts = {}
    for name, row in images.items():
        steps, iterations = map(int, re.match(r"(\d+) steps, (\d+) steering iterations", row["notes"]).groups())
        assert int(row["transformer forwards"]) == steps + iterations
        counts[name] = iterations
    # 4 steps: steps 0-1 steered, 16 iterations each by the published schedule.
    assert counts["reference mode, reference schedule"] == 32
    # The responsive classifier crosses p >= 0.9, so early exit saves iterations.
    assert counts["fast mode, early-exit schedule"] < counts["fast mode, reference schedule"]
    # Each first-K classifier is calibrated too: its row exits early as its comparison row does,
    # so the two differ only in the classifier's blocks.
    cap = sum(schedule_preset("fast", "flux-dev", 2).iterations)      # 2 steps: --image-steps 4 x 28/50
    for name in [n for n in images if n.endswith("fast schedule") and "reference" not in n]:
        assert counts[name] < cap, (name, counts[name])
        assert float(re.search(r"last p\(target\) (\d\.\d+)", images[name]["notes"]).group(1)) >= 0.9, name
    assert re.search(r"; first 1 blocks: gain \S+, reaches 0\.9 at evaluation \d", report)
    assert re.search(r"p\(target\) at 64² step 0: 0\.\d\d( -> \d\.\d\d)+ \(reaches 0\.9 at evaluation \d\)", report)


def test_throughput_rows_time_one_call_of_b_seeds_against_batch_1(script, tmp_path, capsys):
    _, rows, _ = run_tiny(script, tmp_path, capsys, "--no-micro", "--presets", "fast", "--throughput-batches", "1", "2")
    check_speed_ups(rows)
    batches = [r for r in rows if r["measurement"].startswith("whole image per batch size, denoising loop")]
    assert [r["variant"] for r in batches] == ["plain, batch 1", "plain, batch 2", "steered, fast preset, batch 1",
                                               "steered, fast preset, batch 2"]
    assert all(float(r["time (ms)"]) > 0 for r in batches)
    assert batches[1]["speed-up"].endswith("vs plain, batch 1") and "2 images per call" in batches[1]["notes"]
    assert batches[3]["speed-up"].endswith("vs steered, fast preset, batch 1")


def test_a_spent_budget_skips_rows_and_says_so(script, tmp_path, capsys):
    _, rows, records = run_tiny(script, tmp_path, capsys, "--budget-s", "0", "--layers", "--presets", "fast")
    assert rows and all(r["notes"].startswith("skipped: time budget") for r in rows)
    assert all(r["ms"] is None for r in records)


def test_a_failed_row_makes_the_run_exit_1_and_the_last_line_counts_it(script, tmp_path, capsys, monkeypatch):
    from flux_bench.report import Row
    from flux_bench.timing import Budget, guarded

    def broken_and_late_rows(*args, **kwargs):
        broken, late = Row(0, "g", "broken"), Row(0, "g", "late")
        guarded(broken, lambda: 1 / 0)                       # a row that fails
        guarded(late, lambda: (1.0, None), Budget(0.0))      # and one past the budget: not a failure
        yield from (broken, late)

    monkeypatch.setattr(script, "classifier_rows", broken_and_late_rows)
    threads = torch.get_num_threads()
    try:
        code = script.main([*QUICK, "--layers", "--image-resolutions", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    (last,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Finished in")]
    assert "1 failed, 1 skipped" in last


@pytest.mark.parametrize("options, named", [
    (["--repeats", "0"], "--repeats"), (["--image-steps", "0"], "--image-steps"), (["--threads", "0"], "--threads"),
    (["--warmup", "-1"], "--warmup"), (["--batch-size", "0"], "--batch-size"), (["--layers", "4"], "--layers 4"),
    (["--layers", "0"], "--layers 0"), (["--throughput-batches", "0"], "--throughput-batches"),
    (["--resolutions", "0"], "resolution 0"), (["--engine", "cuda-graph"], "--engine cuda-graph"),
    (["--engine", "tensorrt"], "--engine tensorrt"), (["--device", "cuda:0"], "no CUDA device")])
def test_bad_options_are_refused_in_one_line_naming_them(script, capsys, options, named):
    if named == "no CUDA device" and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--tiny", *options])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()          # one line, no usage first
    assert line.endswith(HELP_HINT)
    line = line.removesuffix(HELP_HINT)
    assert named in line and line.count(" --") <= 1     # it names this option, no other


@pytest.mark.parametrize("options", [["--repeat", "2"], ["--warm", "1"]])
def test_a_prefix_of_an_option_is_refused_not_taken_for_it(script, capsys, options):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--tiny", *options])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python bench/gpu_flux_dev.py: error: unrecognized arguments: {options[0]}")


def test_an_unwritable_out_is_refused_before_the_model_is_built(script, capsys, monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(script, "build_flux_pipeline", no_model)
    blocked = tmp_path / "a-file"                        # an --out folder that cannot be made
    blocked.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        script.main([*QUICK, "--out", str(blocked / "reports")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python bench/gpu_flux_dev.py: error: --out {blocked / 'reports'}/tiny_")


def test_a_run_without_cuda_says_so_in_one_line(script, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--quick"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "python bench/gpu_flux_dev.py: error: no CUDA device here: run on a machine with a CUDA GPU, or use --tiny "
        f"for a CPU smoke run{HELP_HINT}"]


def test_a_row_running_at_the_hard_limit_is_stopped_and_says_so():
    import time

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from flux_bench.report import Row
        from flux_bench.timing import Budget, guarded
    finally:
        sys.path.remove(str(ROOT / "bench"))
    row, budget, started = Row(512, "g", "hang"), Budget(None, hard_seconds=0.3), time.perf_counter()
    assert guarded(row, lambda: (time.sleep(5), (1.0, 0.0))[1], budget) == (None, None)
    assert time.perf_counter() - started < 2.5
    assert row.note.startswith("stopped at the run's hard limit")
    later = Row(512, "g", "next")
    assert guarded(later, lambda: (1.0, 0.0), budget) == (None, None)      # past the limit: not started
    assert later.note == "skipped: time budget (0 s) spent"


def test_row_writer_appends_each_row_at_once(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from flux_bench.report import Row, RowWriter
    finally:
        sys.path.remove(str(ROOT / "bench"))
    writer = RowWriter(tmp_path / "r.md", "# header")
    writer.write(Row(512, "g", "a", ms=10.0))
    assert (tmp_path / "r.md").read_text().splitlines()[-1].startswith("| 512² | g | a | 10.00 | ref |")
    writer.write(Row(512, "g", "b", ms=4.0, against="a"))
    assert "| 2.50x vs a |" in (tmp_path / "r.md").read_text().splitlines()[-1]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_runs_from_a_copy_of_the_checkout_without_spacy(tmp_path):
    """A copy of the checkout whose l2s is not the installed one: the script must time that copy,
    and nothing on its path may import spaCy (the GPU machine has none)."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "bench" / SCRIPT.name)
    shutil.copytree(ROOT / "bench" / "flux_bench", checkout / "bench" / "flux_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "l2s").symlink_to(ROOT / "l2s", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Run the script as __main__, then fail if spaCy was imported on the way.
    probe = (f"import runpy, sys; sys.argv = [{str(checkout / 'bench' / SCRIPT.name)!r}, *sys.argv[1:]]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "assert 'spacy' not in sys.modules, 'spaCy was imported'\n")
    subprocess.run([sys.executable, "-c", probe, *QUICK, "--no-micro", "--presets", "fast", "--layers",
                    "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=600)
    (report,) = (tmp_path / "out").glob("tiny_*.md")
    imported = re.search(r"l2s from (\S+)", report.read_text()).group(1)
    assert imported == str(checkout / "l2s")        # not the installed (or the original) l2s


def test_tiny_runs_write_outside_the_tracked_tree(script):
    args = script.parse_args(["--tiny"])
    path = script.report_path(args, "tiny", torch.device("cpu"))
    assert path.parent == ROOT / "out" / "gpu_flux_dev"
    quick = script.parse_args(["--tiny", "--quick"])
    assert quick.budget_s == 330 and quick.hard_limit_s == 345 and quick.presets == ["fast", "early-exit"]
    assert not quick.reference_images


@pytest.mark.slow
def test_tiny_run_with_compiles_reports_every_row(script, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert script.main(["--tiny", "--out", str(tmp_path), "--presets", "fast"]) == 0
    finally:
        torch.set_num_threads(threads)
    (report,) = tmp_path.glob("tiny_*.md")
    text = report.read_text()
    from l2s.steer import MODES

    expected = ["| compiled blocks (regional torch.compile) |", "| compiled bf16 |"]
    if "fast+compiled" in MODES:        # the compiled steering mode, iteration and image
        expected += ["| fast+compiled (capture sdpa) | ", "| fast+compiled mode, fast schedule |"]
    for variant in expected:
        assert variant in text
    assert "failed:" not in text and ", 0 failed," in text and "cold compile + first call" in text
