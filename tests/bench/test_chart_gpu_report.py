"""bench/chart_gpu_report.py: bars from a GPU report's measured rows only, lengths in proportion."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def charting():
    spec = importlib.util.spec_from_file_location("chart_gpu_report", ROOT / "bench" / "chart_gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ITERATION = "steering iteration (fwd+bwd to latent)"


def test_only_measured_chart_rows_become_bars_in_proportion(charting, tmp_path):
    report = _report(tmp_path, [
        {"group": ITERATION, "variant": "reference mode", "ms": 200.0},
        {"group": ITERATION, "variant": "fast", "ms": 50.0},
        {"group": ITERATION, "variant": "fast+cudagraphs", "ms": None, "note": "skipped: time budget"},
        {"group": "transformer forward (no grad)", "variant": "eager", "ms": 60.0},
    ])
    groups = charting.measured_rows(report)
    assert groups == {ITERATION: [("reference mode", 200.0), ("fast", 50.0)]}
    assert charting.bar_lengths([200.0, 50.0], 400) == [400, 100]
    out = tmp_path / "c.png"
    assert charting.main([str(report), str(out)]) == 0
    assert Image.open(out).size[0] == charting.WIDTH


def test_a_report_without_measured_rows_is_a_usage_error(charting, tmp_path, capsys):
    report = _report(tmp_path, [{"group": ITERATION, "variant": "fast", "ms": None}])
    with pytest.raises(SystemExit) as exit_:
        charting.main([str(report), str(tmp_path / "c.png")])
    assert exit_.value.code == 2 and "no measured steering-iteration or whole-image rows" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing report", "the .md report", "not a PNG", "unwritable out"])
def test_a_bad_path_is_one_line_and_exit_2_not_a_traceback(charting, tmp_path, capsys, case):
    report = _report(tmp_path, [{"group": ITERATION, "variant": "fast", "ms": 50.0}])
    markdown = tmp_path / "r.md"
    markdown.write_text("# a report\n\n| row | ms |\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    report, out, said = {
        "missing report": (tmp_path / "missing.jsonl", tmp_path / "c.png", "no such file"),
        "the .md report": (markdown, tmp_path / "c.png", "line 1 is damaged"),
        "not a PNG": (report, tmp_path / "c.txt", "give a PNG path"),
        "unwritable out": (report, blocker / "c.png", "cannot make its folder"),
    }[case]
    with pytest.raises(SystemExit) as exit_:
        charting.main([str(report), str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()
