"""bench/throughput.py: batch rows on the tiny FLUX (a row per batch size, speed-up against the
first batch size measured, a refused batch says why), bad options (a CUDA-graph mode, a --json that
cannot be written) refused before a model loads,
and the commands of its ``eval`` rows."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from .scripts import loaded_script


@pytest.fixture(scope="module")
def script():
    yield from loaded_script("throughput.py")


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| tiny-flux")]


def test_batch_rows_on_the_tiny_flux(script, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert script.main(["batch", "--models", "tiny-flux", "--batch-sizes", "1", "2", "--images", "2", "--timer", "cpu",
                            "--json", str(tmp_path / "rows.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert ", 1 thread(s), cpu time," in out.splitlines()[0]           # what the seconds are
    rows = _rows(out)
    assert [(r[1], r[2]) for r in rows] == [("plain", "1"), ("plain", "2"), ("steered", "1"), ("steered", "2")]
    first = {r[1]: float(r[5]) for r in rows if r[2] == "1"}
    for kind, batch, images, _, per_s, speedup in ((r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows):
        # the speed-up is this row's images/s over batch 1's of the same kind (timings vary; the ratio must agree)
        ratio, base = speedup.split("x vs batch ")
        assert float(ratio) == pytest.approx(float(per_s) / first[kind], abs=0.02, rel=0.02) and base == "1"
        assert images == "2" and float(per_s) > 0     # batched steering of mixed prompts runs
        assert batch != "1" or ratio == "1.00"


class CountingSteerer:
    """Stands in for a pipeline: makes one (empty) image per prompt, instantly."""

    def __call__(self, prompts, seed, steer, progress):
        return SimpleNamespace(images=[None] * len(prompts))


def test_the_speed_up_names_the_first_batch_size_measured(script, monkeypatch):
    monkeypatch.setattr(script, "load_model", lambda name, mode: CountingSteerer())
    args = script.parse_args(["batch", "--models", "shapes", "--kinds", "plain", "--batch-sizes", "2", "4",
                              "--images", "4"])
    rows = list(script.batch_rows(args))
    assert [(r["batch"], r["speedup_vs_batch"]) for r in rows] == [(2, 2), (4, 2)]      # not "vs batch 1"
    assert rows[0]["speedup"] == 1.0


@pytest.mark.parametrize("options, named", [
    (["batch", "--images", "0"], "--images"), (["batch", "--batch-sizes", "1", "0"], "--batch-sizes"),
    (["batch", "--threads", "0"], "--threads"), (["batch", "--mode", "bogus"], "--mode"),
    (["batch", "--mode", "fast+cudagraphs"], "--mode"), (["batch", "--json", "{blocked}/rows.json"], "--json"),
    (["eval", "--json", "{blocked}/rows.json"], "--json"), (["eval", "--processes", "0"], "--processes")])
def test_bad_options_fail_in_one_line_before_a_model_loads(script, monkeypatch, capsys, tmp_path, options, named):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded or an eval started")

    monkeypatch.setattr(script, "load_model", no_model)
    monkeypatch.setattr(script.subprocess, "run", no_model)      # nor an eval run (minutes)
    blocked = tmp_path / "a-file"                                # a --json folder that cannot be made
    blocked.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        script.main([option.format(blocked=blocked) for option in options])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert named in line


@pytest.mark.parametrize("options", [["batch", "--image", "2"], ["eval", "--process", "1"]])
def test_a_prefix_of_a_subcommands_option_is_refused_naming_the_script(script, capsys, options):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(options)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python bench/throughput.py: error: unrecognized arguments: {options[1]}")


def test_a_subcommands_own_error_names_the_script(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["batch", "--kinds", "bogus"])         # refused by the subcommand's parser
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python bench/throughput.py: error: argument --kinds")
    assert line.endswith("(see 'python bench/throughput.py batch --help')")


def test_every_mode_a_cpu_runs_is_offered(script):
    from l2s.steer import CPU_MODES

    assert [script.parse_args(["batch", "--mode", mode]).mode for mode in CPU_MODES] == list(CPU_MODES)


def test_a_refused_batch_is_a_row_that_says_why(script):
    from l2s.errors import UsageError

    class Refusing:
        def __call__(self, prompt, **kwargs):
            raise UsageError("steering takes one image at a time")

    assert script.measure_batch(Refusing(), 4, 8, True) == {
        "skipped": "UsageError: steering takes one image at a time"}


def test_eval_rows_run_the_same_command_alone_and_under_torchrun(script, tmp_path):
    alone = script.eval_command(1, ["--model", "tiny"], tmp_path / "a")
    spread = script.eval_command(2, ["--model", "tiny"], tmp_path / "b")
    assert alone[1:3] == ["-m", "l2s.cli"]
    assert spread[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert alone[3:-1] == spread[8:-1] == ["eval", "--model", "tiny", "--quiet", "--out"]
