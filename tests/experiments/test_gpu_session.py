"""experiments/scripts/gpu_session.sh: its usage, the exit status it passes on, and a failed build stopping it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "scripts" / "gpu_session.sh"
# python3 as this interpreter, except that `python3 -m pip ...` (the CUDA build) fails.
SHIM = f"""#!/bin/sh
if [ "$1 $2" = "-m pip" ]; then echo "error: the build broke here"; exit 1; fi
exec {sys.executable} "$@"
"""


def session(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python3").write_text(SHIM)
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_help_prints_the_usage_and_exits_0(tmp_path):
    done = session(tmp_path, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: bash experiments/scripts/gpu_session.sh bench|tests")


def test_an_unknown_part_prints_the_usage_and_exits_2(tmp_path):
    done = session(tmp_path, "bogus")
    assert done.returncode == 2 and done.stderr.startswith("usage:")


def test_bench_passes_on_the_scripts_exit_status(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: --quick would run for minutes")
    done = session(tmp_path, "bench")
    assert "no CUDA device here" in (tmp_path / "out" / "bench.log").read_text()
    assert done.returncode == 2                    # gpu_flux_dev.py's, not tee's 0


def test_a_failed_build_stops_the_tests_and_keeps_the_whole_log(tmp_path):
    done = session(tmp_path, "tests")
    assert done.returncode == 1
    assert "build failed (exit 1)" in done.stdout and "no tests run" in done.stdout
    assert "the build broke here" in (tmp_path / "out" / "build.log").read_text()
    assert not (tmp_path / "out" / "gpu_tests.log").exists()
