"""--quiet: only l2s's own lines (the libraries' loading bars and log lines off, then restored);
transformers' torchvision-fallback warning never shows; the last line names every file written."""
import logging
import subprocess
import sys

import pytest

from l2s.cli.noise import quiet_libraries
from l2s.cli.outputs import folder_outputs, wrote_line

MARK = "=== quiet ==="
# The shipped shapes model loads from its folder (diffusers' and transformers' loading bars);
# no steering and two steps keep it short.
SCRIPT = f"""
import sys
from l2s.cli import main
base = ["generate", "a red circle to the left of a blue square", "--no-steer", "--steps", "2", "--device", "cpu"]
assert main(base + ["--out", sys.argv[1]]) == 0
print({MARK!r}, file=sys.stderr, flush=True)
assert main(base + ["--out", sys.argv[2], "--quiet"]) == 0
"""


def test_quiet_generate_prints_only_l2s_lines(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "a"), str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loud, quiet = result.stderr.split(MARK + "\n")
    assert "Loading pipeline components" in loud  # the noise --quiet is there to remove
    assert "requires torchvision" not in result.stderr + result.stdout
    lines = [line.strip() for line in quiet.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("l2s: ") for line in lines), lines
    assert lines[-1] == f"l2s: wrote image.png and report.json in {tmp_path / 'b'}"


def test_quiet_libraries_restores_what_it_changed():
    from diffusers.utils import logging as diffusers_logging

    logger = logging.getLogger("diffusers")
    level, bars = logger.level, diffusers_logging.is_progress_bar_enabled()
    with quiet_libraries():
        assert logger.level == logging.ERROR and not diffusers_logging.is_progress_bar_enabled()
    assert (logger.level, diffusers_logging.is_progress_bar_enabled()) == (level, bars)


def test_run_folder_outputs_name_every_file(tmp_path):
    for name in ("summary.json", "results.jsonl", "contact_sheet_01.png", ".l2s.lock"):
        (tmp_path / name).write_text("x")
    for index in range(3):
        samples = tmp_path / "steered" / f"{index:05d}" / "samples"
        samples.mkdir(parents=True)
        (samples / "0000.png").write_text("x")
        (samples / "0000.json").write_text("x")
        (samples.parent / "metadata.jsonl").write_text("x")
    names = folder_outputs(tmp_path)
    assert names == ["contact_sheet_01.png", "results.jsonl", "summary.json",
                     "steered/: 3 images and 6 record files"]
    assert wrote_line(tmp_path, ["a.png"]) == f"l2s: wrote a.png in {tmp_path}"
    assert wrote_line(tmp_path, ["a", "b", "c"]) == f"l2s: wrote a, b and c in {tmp_path}"


def test_error_lines_name_the_flag_not_the_python_argument():
    from l2s.cli.outputs import error_line
    from l2s.errors import L2SError
    from l2s.run_folders import RESTART

    expected = "l2s: error: x is damaged; rerun with --restart to train from the start"
    assert error_line(L2SError(f"x is damaged; {RESTART}")) == expected
    assert error_line(L2SError("rerun with --restart (restart=True) to start over")) == \
        "l2s: error: rerun with --restart to start over"
    assert error_line(L2SError("a (resume=False) b")) == "l2s: error: a b"


def test_library_loading_shows_no_torchvision_notice():
    """Outside the command line too: loading the shipped model through the library (and a wrapped
    diffusers pipeline) does not pass transformers' torchvision notice on to the user."""
    script = ("import l2s.pipelines\nfrom l2s.shapes import load_shapes_steerer\nload_shapes_steerer()\n"
              "import transformers; print(transformers.utils.is_torchvision_available())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip().splitlines()[-1] == "True":
        return  # with torchvision installed there is no notice to drop
    assert "requires torchvision" not in result.stderr + result.stdout


def test_a_warning_during_a_progress_bar_gets_its_own_line(monkeypatch):
    import io

    from tqdm import tqdm

    from l2s.cli.outputs import _AboveBars

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = _AboveBars()
    handler.setFormatter(logging.Formatter("l2s: %(message)s"))
    record = logging.LogRecord("l2s.engines", logging.WARNING, __file__, 1, "building an engine", None, None)
    with tqdm(total=3, file=stderr, desc="steps") as bar:
        bar.update(1)
        handler.emit(record)
    text = stderr.getvalue()
    assert "l2s: building an engine\n" in text
    assert "]l2s:" not in text     # a plain stream handler glued it to the bar's end


@pytest.mark.parametrize("local_rank, shown", [("0", True), ("1", False)])
def test_a_warning_every_process_meets_is_said_once_per_machine(local_rank, shown, monkeypatch):
    """Under a launcher, a library warning marked EVERY_PROCESS goes the way of ``say`` (the machine's
    first process says it; with no group to compare through, the others stay silent), and so does an
    old option spelling's warning; a process's own warnings are still written by each."""
    import io

    from l2s.cli.options import deprecated
    from l2s.cli.outputs import _AboveBars
    from l2s.distributed import EVERY_PROCESS

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")   # launchers set it beside WORLD_SIZE
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    handler = _AboveBars()
    handler.setFormatter(logging.Formatter("l2s: %(message)s"))
    logger = logging.getLogger("l2s.models")
    for extra, message in ((EVERY_PROCESS, "warning: for all"), ({}, "warning: mine")):
        handler.emit(logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None, extra=extra))
    deprecated("--torch-dtype is deprecated; use --dtype bf16")
    said = stderr.getvalue().splitlines()
    assert ("l2s: warning: for all" in said) == shown and "l2s: warning: mine" in said
    assert ("l2s: warning: --torch-dtype is deprecated; use --dtype bf16" in said) == shown


def test_under_a_launcher_only_each_machines_first_process_draws_loading_bars(monkeypatch):
    import l2s.cli
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    seen = []
    monkeypatch.setattr(l2s.cli, "_dispatch", lambda argv: seen.append(
        (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())) or 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")   # launchers set it beside WORLD_SIZE
    for local_rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert l2s.cli.main(["eval"]) == 0
    assert seen == [(True, True), (False, False)]   # not one copy of each bar per process
    assert diffusers_logging.is_progress_bar_enabled()   # as it was after
