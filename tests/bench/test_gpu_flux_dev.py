"""Smoke tests of bench/gpu_flux_dev.py: its --tiny CPU run produces the full report table, and
run as a script from a checkout it imports that checkout's l2s."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2s.steer import PRESETS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_flux_dev.py"
COLUMNS = ["resolution", "measurement", "variant", "time (ms)", "speed-up vs ref",
           "peak extra memory (GiB)", "transformer forwards", "notes"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("l2s_bench_gpu_flux_dev", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module             # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run_tiny(script, tmp_path: Path, capsys, *extra: str) -> tuple[str, list[dict]]:
    """Run the script in-process; returns the written report and its table rows as dicts."""
    out = tmp_path / "report.md"
    threads = torch.get_num_threads()
    try:
        assert script.main(["--tiny", "--out", str(out), *extra]) == 0
    finally:
        torch.set_num_threads(threads)          # --tiny pins one thread; leave the session as it was
    report = out.read_text()
    assert report in capsys.readouterr().out    # what is printed is what is written
    lines = [line for line in report.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    assert sum(line.startswith("|") for line in report.splitlines()) == len(lines)   # ONE table
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return report, rows


def check_ratios(rows: list[dict]) -> None:
    """Every timed row has a speed-up against its group's reference row of the same resolution."""
    baselines = {(r["resolution"], r["measurement"]): float(r["time (ms)"])
                 for r in rows if r["speed-up vs ref"] == "1.00x (ref)"}
    for r in rows:
        assert "failed" not in r["notes"] and "NON-FINITE" not in r["notes"], r
        ms = float(r["time (ms)"])
        assert ms > 0
        base = baselines.get((r["resolution"], r["measurement"]))
        if r["measurement"].startswith("transformer forward"):
            assert r["speed-up vs ref"] == "-"
        elif r["speed-up vs ref"] != "1.00x (ref)":
            assert base is not None, r
            assert float(r["speed-up vs ref"].rstrip("x")) == pytest.approx(base / ms, rel=0.02, abs=0.01)


def image_rows(rows: list[dict], resolution: str) -> dict[str, dict]:
    return {r["variant"]: r for r in rows
            if r["measurement"] == "whole image, denoising loop" and r["resolution"] == resolution}


def test_whole_image_rows_count_every_forward(script, tmp_path, capsys):
    report, rows = run_tiny(script, tmp_path, capsys, "--no-micro", "--image-resolutions", "64",
                            "--presets", "front-loaded", "fast", "--image-steps", "4")
    images = image_rows(rows, "64²")
    assert list(images) == ["reference mode, reference schedule", "fast mode, reference schedule",
                            "fast mode, front-loaded schedule", "fast mode, fast schedule"]
    assert len(rows) == 4
    check_ratios(rows)
    for row in images.values():
        steps, iterations = map(int, re.match(r"(\d+) steps, (\d+) steering iterations", row["notes"]).groups())
        assert int(row["transformer forwards"]) == steps + iterations
    # 4 steps: steps 0-1 steered, 16 iterations each (published schedule, targets never reached).
    assert images["reference mode, reference schedule"]["notes"].startswith("4 steps, 32 steering iterations")
    assert images["fast mode, fast schedule"]["notes"].startswith("2 steps, ")     # 28/50 of 4
    assert "tiny FLUX-dev-shaped" in report and "versions: torch" in report


@pytest.mark.slow
def test_tiny_run_reports_every_row(script, tmp_path, capsys):
    report, rows = run_tiny(script, tmp_path, capsys)
    measured = {(r["resolution"], r["measurement"].split(" (")[0].split(",")[0], r["variant"]) for r in rows}
    for resolution in ("64²", "128²"):
        assert (resolution, "transformer forward", "stock diffusers") in measured
        for mode in ("reference", "fast"):
            assert (resolution, "steering iteration", f"{mode} mode") in measured
        for variant in ("explicit softmax", "SDPA selector (l2s.capture)", "native op (l2s.ops)"):
            assert (resolution, "capture op", variant) in measured
    assert ("-", "classifier fwd+bwd to maps", "eager fp32") in measured
    assert ("-", "classifier fwd+bwd to maps", "torch.compile float32 (default mode)") in measured
    images = image_rows(rows, "64²")                       # whole images: the smallest resolution
    assert list(images) == (["reference mode, reference schedule"]
                            + [f"fast mode, {preset} schedule" for preset in PRESETS])
    assert len(rows) == 2 * (1 + 2 + 3) + 2 + 1 + len(PRESETS)
    check_ratios(rows)
    iterations = [r for r in rows if r["measurement"].startswith("steering iteration")]
    assert all(r["transformer forwards"] == "1" for r in iterations)


def test_script_imports_l2s_from_its_own_checkout(tmp_path):
    """A copy of the checkout whose l2s is not the installed one: the script must time that copy."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "bench" / SCRIPT.name)
    (checkout / "l2s").symlink_to(ROOT / "l2s", target_is_directory=True)
    out = tmp_path / "report.md"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # No measurements: --no-micro and no whole-image resolutions; the report header still names l2s.
    subprocess.run([sys.executable, str(checkout / "bench" / SCRIPT.name), "--tiny", "--no-micro",
                    "--image-resolutions", "--out", str(out)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    imported = re.search(r"l2s from (\S+)", out.read_text()).group(1)
    assert imported == str(checkout / "l2s")        # not the installed (or the original) l2s
