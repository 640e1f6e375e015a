"""Real processes, real signals: a second writer into one folder is refused, Ctrl-C (SIGINT) ends
with one line and exit 130, and a run stopped by SIGINT or SIGKILL resumes to exactly what an
uninterrupted run writes, for ``l2s make-data`` on the tiny model and for ``l2s eval``.

Each test starts one ``l2s`` process (about 5 s of imports); the second writer, the resumed and
the uninterrupted runs are this process.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2s.cli import INTERRUPTED, main
from l2s.evaluation import RUN_DEPENDENT_META
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import write_map_dataset

# A test run started in the background (cmd &) passes SIGINT on ignored, and Python then installs
# no Ctrl-C handler; the child restores it, as an interactive shell's child would have it.
ENTRY = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from l2s.cli import main; sys.exit(main())")
N_SAMPLES, SHARD = 16, 2
EVAL = ["eval", "--model", "tiny", "--prompts", "shapes", "--n-prompts", "4", "--seeds", "0-1", "--steps", "2",
        "--quiet"]
N_IMAGES = 4 * 2 * 2  # prompts x seeds x (base, steered)


def _env() -> dict[str, str]:
    # The same single thread as the in-process runs (conftest), so every run computes the same bits.
    return {**os.environ, "OMP_NUM_THREADS": "1", "L2S_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until ``condition()``; fail if ``proc`` ends first (the job was too short to interrupt)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before it could be interrupted: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the process to get going")
        time.sleep(0.02)


def _interrupt(proc: subprocess.Popen, stopped: bool = False) -> str:
    """Ctrl-C: SIGINT (a stopped process gets it when continued); its stderr after a clean end."""
    proc.send_signal(signal.SIGINT)
    if stopped:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and not _error_lines(err)
    said = [line for line in err.splitlines() if line.startswith("l2s:")]
    assert said[-1] == INTERRUPTED and said.count(INTERRUPTED) == 1
    return err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("l2s: error:")]


# ---------------------------------------------------------------------------------------------
# make-data on the tiny model
# ---------------------------------------------------------------------------------------------

def noise_pairs(folder: Path, count: int) -> Path:
    """``folder/pairs.jsonl`` (returned): COUNT noise images, "a cat <relation> a dog"."""
    rng = np.random.RandomState(0)
    relations = ("above", "below", "to the left of", "to the right of")
    with open(folder / "pairs.jsonl", "w") as lines:
        for i in range(count):
            Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(folder / f"img{i}.png")
            lines.write(json.dumps({"image": f"img{i}.png", "prompt": f"a cat {relations[i % 4]} a dog"}) + "\n")
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def make_data_args(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("pairs")
    noise_pairs(root, N_SAMPLES)
    return ["make-data", "--model", "tiny", "--source", "pairs", "--annotations", str(root / "pairs.jsonl"),
            "--images", str(root), "--steps", "4", "--store-steps", "1", "3", "--size", "32", "--shard-size",
            str(SHARD), "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted_dataset(make_data_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "data"
    assert main(make_data_args + ["--out", str(out)]) == 0
    return out


def _committed(out: Path) -> int:
    try:
        return len(json.loads((out / "progress.json").read_text())["chunks"])
    except (OSError, ValueError):
        return 0


def _dataset_fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 per file (JSON-lines files as sorted lines: a redone chunk's lines come last)."""
    def content(path: Path) -> bytes:
        data = path.read_bytes()
        return b"\n".join(sorted(data.splitlines())) if path.suffix == ".jsonl" else data

    return {str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".l2s.lock"}


def test_make_data_refuses_a_second_writer_and_resumes_after_ctrl_c(make_data_args, uninterrupted_dataset,
                                                                    tmp_path, capsys):
    out = tmp_path / "data"
    argv = make_data_args + ["--out", str(out)]
    first = _start(argv)
    _wait_for(lambda: _committed(out) >= 1, first)
    first.send_signal(signal.SIGSTOP)  # holds its lock, mid-run, while this process tries to write too
    try:
        before = sorted(p.name for p in out.rglob("*"))
        code = main(argv)
        second_err = capsys.readouterr().err
        done_while_second_ran = _committed(out)
        assert sorted(p.name for p in out.rglob("*")) == before  # the second writer wrote nothing
    finally:
        _interrupt(first, stopped=True)
    assert code == 2
    (line,) = _error_lines(second_err)
    assert f"is being written by another l2s process (pid {first.pid})" in line
    assert 1 <= done_while_second_ran < N_SAMPLES // SHARD  # interrupted mid-run
    assert main(argv) == 0  # the same command resumes
    assert _dataset_fingerprint(out) == _dataset_fingerprint(uninterrupted_dataset)  # nothing lost or doubled


def test_make_data_killed_with_sigkill_resumes_to_the_uninterrupted_dataset(make_data_args, uninterrupted_dataset,
                                                                            tmp_path):
    out = tmp_path / "data"
    argv = make_data_args + ["--out", str(out)]
    proc = _start(argv)
    _wait_for(lambda: _committed(out) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _committed(out) < N_SAMPLES // SHARD
    assert main(argv) == 0  # the dead process's lock file does not block the resumed run
    assert _dataset_fingerprint(out) == _dataset_fingerprint(uninterrupted_dataset)


def test_make_data_stopped_with_sigterm_says_so_and_resumes(make_data_args, uninterrupted_dataset, tmp_path):
    """SIGTERM (kill, timeout, a container's or scheduler's stop) ends like Ctrl-C: one line, exit 143,
    everything committed kept, and the same command completes the same dataset."""
    out = tmp_path / "data"
    argv = make_data_args + ["--out", str(out)]
    proc = _start(argv)
    _wait_for(lambda: _committed(out) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("l2s:")][-1] == INTERRUPTED
    assert 1 <= _committed(out) < N_SAMPLES // SHARD
    assert main(argv) == 0
    assert _dataset_fingerprint(out) == _dataset_fingerprint(uninterrupted_dataset)


# ---------------------------------------------------------------------------------------------
# eval on the tiny model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted_eval(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(EVAL + ["--out", str(out)]) == 0
    return out


def _finished_images(out: Path) -> int:
    return len(list(out.glob("*/*/samples/*.json")))


class _Probabilities(tuple):
    """A record's steering probabilities, equal within float rounding: a resumed or spread run
    batches other images together (``--batch-size``), and the classifier's batch of another size
    rounds the last bits differently (the images are the same)."""

    def __eq__(self, other):
        return len(self) == len(other) and np.allclose(self, other, rtol=1e-5, atol=1e-7)

    def __ne__(self, other):
        return not self == other

    __hash__ = tuple.__hash__


def _eval_fingerprint(out: Path) -> tuple[dict[str, str], list[dict]]:
    """PNG bytes per image, and every image's record without its timings and batch size."""
    pngs = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("*/*/samples/*.png"))}
    records = []
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        record["meta"] = {k: _Probabilities(v) if k.startswith("target_probability") else v
                          for k, v in record["meta"].items() if k not in RUN_DEPENDENT_META}
        records.append(record)
    return pngs, records


def test_eval_refuses_a_second_run_and_resumes_after_ctrl_c(uninterrupted_eval, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(EVAL + ["--out", str(out)])
    _wait_for(lambda: _finished_images(out) >= 2, proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        code = main(EVAL + ["--out", str(out)])  # this process is the second writer
        err = capsys.readouterr().err
    finally:
        _interrupt(proc, stopped=True)
    assert code == 2
    (line,) = _error_lines(err)
    assert f"pid {proc.pid}" in line
    done = _finished_images(out)
    assert 2 <= done < N_IMAGES
    assert main(EVAL + ["--out", str(out)]) == 0
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert sum(counts[m]["status_counts"].get("resumed", 0) for m in counts) == done
    assert _eval_fingerprint(out) == _eval_fingerprint(uninterrupted_eval)


def test_eval_killed_with_sigkill_resumes_and_remakes_a_damaged_image(uninterrupted_eval, tmp_path):
    out = tmp_path / "run"
    proc = _start(EVAL + ["--out", str(out)])
    _wait_for(lambda: _finished_images(out) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(out.glob("*/*/samples/*.json"))
    assert 3 <= len(finished) < N_IMAGES
    damaged = finished[0].with_suffix(".png")
    damaged.write_bytes(damaged.read_bytes()[:100])  # a record that vouches for a broken image
    assert main(EVAL + ["--out", str(out)]) == 0
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert sum(counts[m]["status_counts"].get("resumed", 0) for m in counts) == len(finished) - 1
    assert _eval_fingerprint(out) == _eval_fingerprint(uninterrupted_eval)


# ---------------------------------------------------------------------------------------------
# In-process: the entry point's last lines of defence, and options checked before any work
# ---------------------------------------------------------------------------------------------

def _raising(error: BaseException):
    def entry(*args, **kwargs):
        raise error

    return entry


@pytest.mark.parametrize("error, code, message", [
    (KeyboardInterrupt(), 130, INTERRUPTED),
    (MemoryError(), 2, "l2s: error: out of memory (MemoryError)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 4000000000000 bytes."), 2, "l2s: error: out of memory ([enforce fail"),
    (OSError(errno.EIO, "Input/output error", "/runs/x/log.jsonl"), 2,
     "l2s: error: /runs/x/log.jsonl: Input/output error; fix that, then rerun the same command (a run resumes)"),
])
def test_interrupts_and_exhausted_memory_are_one_line(error, code, message, monkeypatch, capsys):
    import l2s.cli.training

    monkeypatch.setattr(l2s.cli.training, "train_main", _raising(error))
    assert main(["train", "data", "--out", "x"]) == code
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert line.startswith(message), line


@pytest.mark.parametrize("module, entry, argv, flag", [
    ("training", "train_main", ["train", "data", "--out", "x", "--restart"], "--restart"),
    ("grpo", "grpo_main", ["shapes", "grpo", "--out", "x", "--reward", "rule", "--no-resume"], "--no-resume"),
])
def test_an_interrupted_start_over_says_to_resume_without_its_flag(module, entry, argv, flag, monkeypatch, capsys):
    # rerun as typed, the start-over would remove what it had saved before the interruption
    import importlib

    monkeypatch.setattr(importlib.import_module(f"l2s.cli.{module}"), entry, _raising(KeyboardInterrupt()))
    assert main(argv) == 130
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert line == f"l2s: interrupted; rerun the same command without {flag} to resume what is saved, or with it " \
                   "to start over"


def test_an_interrupted_single_image_says_there_is_nothing_to_resume(monkeypatch, tmp_path, capsys):
    import l2s.evaluation.generation

    monkeypatch.setattr(l2s.evaluation.generation, "generate_image", _raising(KeyboardInterrupt()))
    assert main(["generate", "a cat to the left of a dog", "--model", "tiny", "--quiet",
                 "--out", str(tmp_path)]) == 130
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s: interrupted")]
    assert lines == ["l2s: interrupted; one image has nothing to resume: rerun the command to make it"]


def test_a_single_image_interrupted_before_its_model_loads_says_there_is_nothing_to_resume(monkeypatch, tmp_path,
                                                                                          capsys):
    import l2s.cli.generate

    monkeypatch.setattr(l2s.cli.generate, "check_image_size", _raising(KeyboardInterrupt()))   # torch importing
    argv = ["generate", "a cat to the left of a dog", "--model", "tiny", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 130
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s: interrupted")]
    assert lines == ["l2s: interrupted; one image has nothing to resume: rerun the command to make it"]


def test_an_interrupted_rerun_keeps_the_earlier_image(monkeypatch, tmp_path, capsys):
    from l2s.pipelines.base import SteeringPipeline

    argv = ["generate", "a cat to the left of a dog", "--model", "tiny", "--steps", "1", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("image.png", "report.json")}
    original, calls = SteeringPipeline.__call__, []

    def interrupted_baseline(self, *args, **kwargs):   # the steered call runs, the unsteered one is cut
        calls.append(kwargs.get("steer"))
        if kwargs.get("steer") is False:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", interrupted_baseline)
    assert main(argv + ["--seed", "7"]) == 130
    assert False in calls
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("error", [RuntimeError("a bug"), OSError("a bug: no system call failed"),
                                   FileNotFoundError(errno.ENOENT, "a bug: a file l2s ships is missing", "/l2s/x")])
def test_other_runtime_errors_are_not_hidden(error, monkeypatch):
    import l2s.cli.training

    monkeypatch.setattr(l2s.cli.training, "train_main", _raising(error))
    with pytest.raises(type(error), match="a bug"):
        main(["train", "data", "--out", "x"])


def test_a_reader_that_closes_stdout_early_ends_the_command_quietly():
    # ``l2s parse - | head -1``: no line telling to free space or to resume, no traceback
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "parse", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    proc.stdin.write("a cat left of a dog\n" * 2000)
    proc.stdin.close()
    assert proc.stdout.readline() == "cat | left of | dog\n"
    proc.stdout.close()
    assert (proc.wait(timeout=120), proc.stderr.read()) == (1, "")


def test_under_a_launcher_a_socket_reset_by_a_failed_peer_is_said_as_such(monkeypatch, capsys):
    from l2s.cli import PEER_STOPPED, _guarded

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _guarded(_raising(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))) == 1
    assert capsys.readouterr().err.splitlines() == [PEER_STOPPED]


# ---------------------------------------------------------------------------------------------
# A full disk mid-run (conftest's full_disk: l2s's writers fail once, as ENOSPC does)
# ---------------------------------------------------------------------------------------------

SHAPES_DATA = ["shapes", "make-data", "--scenes", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "maps"
    assert main(SHAPES_DATA + ["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", [".l2s.kind.tmp", "shard-00000.safetensors.tmp", "manifest.jsonl"])  # an append
def test_a_full_disk_mid_run_is_one_line_naming_the_file_and_the_rerun_resumes(name, shapes_dataset, full_disk,
                                                                               tmp_path, capsys):
    out = tmp_path / "maps"
    argv = SHAPES_DATA + ["--out", str(out)]
    failed = full_disk(name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    named = failed[0].removesuffix(".tmp")     # the file meant, not the temporary one
    assert _error_lines(err) == [f"l2s: error: {named}: No space left on device; free some space, then rerun the "
                                 "same command (a run resumes)"] and "Traceback" not in err
    assert not out.exists() or not list(out.rglob("*.tmp"))    # no half file left behind
    assert main(argv) == 0
    assert _dataset_fingerprint(out) == _dataset_fingerprint(shapes_dataset)


def test_parse_refuses_text_that_is_not_utf8(monkeypatch, capsys, tmp_path):
    import io

    class Stdin(io.TextIOWrapper):
        pass

    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(b"a cat left of a dog\n\xff\xfe dog\n")))
    assert main(["parse", "-"]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # nothing parsed before the whole input was read and checked
    assert _error_lines(out.err) == ["l2s: error: stdin line 2 is not UTF-8 text (byte 1: b'\\xff')"]
    assert main(["parse", "a cat \udcff left of a dog"]) == 2  # undecodable argv bytes
    assert _error_lines(capsys.readouterr().err) == ["l2s: error: the prompt is not UTF-8 text"]
    assert main(["generate", "a cat \udcff left of a dog", "--out", str(tmp_path / "o")]) == 2   # before any model
    assert _error_lines(capsys.readouterr().err) == ["l2s: error: the prompt is not UTF-8 text"]


@pytest.mark.parametrize("options, message", [
    (["--seeds", str(2 ** 64)], "seeds must be below 2**64"),
    (["--seeds", "0-100000000000"], "more than 100000 seeds"),
    (["--n-prompts", "-1"], "--n-prompts must be at least 1"),
    (["--detector-threshold", "2"], "--detector-threshold must be in [0, 1]"),
    (["--device", "bogus"], "is not a torch device"),
    (["--prompts", "BINARY"], "is not UTF-8 text (line 2)"),
    (["--lora", "NOPE"], "no LoRA adapter at"),
])
def test_eval_options_are_checked_before_any_work(options, message, tmp_path, capsys, monkeypatch):
    import l2s.cli.evaluate

    monkeypatch.setattr(l2s.cli.evaluate, "load_steerer", lambda args: pytest.fail("loaded a model"))
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(b"a cat left of a dog\n\x89PNG\r\n\x1a\n\x00\xff")
    options = [str(binary) if o == "BINARY" else str(tmp_path / "nope") if o == "NOPE" else o for o in options]
    assert main(["eval", "--out", str(tmp_path / "o"), "--quiet"] + options) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert message in line, line
    assert not (tmp_path / "o").exists()


def test_eval_refuses_an_unusable_or_damaged_run_folder_before_loading_a_model(uninterrupted_eval, tmp_path, capsys,
                                                                             monkeypatch):
    import shutil

    import l2s.cli.evaluate

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(l2s.cli.evaluate, "load_steerer", lambda args: pytest.fail("loaded a model"))
    assert main(EVAL + ["--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in _error_lines(capsys.readouterr().err)[0]
    out = tmp_path / "run"
    shutil.copytree(uninterrupted_eval, out)
    (out / "run.json").write_text('{"generation": {"model": "ti')
    assert main(EVAL + ["--out", str(out)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "run.json is damaged" in line and "--restart" in line
    (out / "run.json").unlink()  # settings unknown: the images cannot be trusted either
    assert main(EVAL + ["--out", str(out)]) == 2
    assert "run.json is missing but" in _error_lines(capsys.readouterr().err)[0]
    monkeypatch.undo()
    assert main(EVAL + ["--out", str(out), "--restart"]) == 0
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert all(set(m["status_counts"]) == {"generated"} for m in counts.values())
    assert _eval_fingerprint(out) == _eval_fingerprint(uninterrupted_eval)


def test_every_long_command_refuses_a_folder_another_process_writes(tmp_path, capsys):
    """make-data, train, eval and the shapes commands: exit 2 naming the holder, before any work."""
    hold = "import sys, time\nfrom l2s.files import output_lock\nwith output_lock(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(60)\n"
    records = [{"label": "above", "timestep": 1, "split": split} for split in ("train", "val")]
    data = write_map_dataset(tmp_path / "data", records, torch.rand(2, 2, 4, 16, 16), class_names=PUBLISHED_CLASSES,
                             num_steps=4)
    out = tmp_path / "held"
    (tmp_path / "none.jsonl").write_text("")             # exists: the paths are checked before the lock
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    commands = [
        ["make-data", "--source", "pairs", "--annotations", str(tmp_path / "none.jsonl"), "--out", str(out)],
        ["train", str(data), "--out", str(out), "--preset", "flux-schnell"],
        EVAL + ["--out", str(out)],
        ["shapes", "train-model", "--preset", "tiny", "--steps", "1", "--out", str(out)],
        ["shapes", "make-data", "--scenes", "1", "--out", str(out)],
        ["shapes", "train-classifier", "--data", str(data), "--out", str(out)],
        ["shapes", "bench", "--out", str(out)],
    ]
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in commands:
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            assert _error_lines(err) == [f"l2s: error: {out} is being written by another l2s process "
                                         f"(pid {holder.pid}); wait for it to finish, or use another output "
                                         "folder"], argv
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".l2s.lock"]  # nobody wrote anything


def test_generate_and_bench_check_weight_folders_before_loading_a_model(tmp_path, capsys, monkeypatch):
    """A --lora or --reward-model folder that holds nothing is named before minutes of model loading."""
    import l2s.cli.generate
    import l2s.shapes

    monkeypatch.setattr(l2s.cli.generate, "load_steerer", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    lora = ["--lora", str(tmp_path / "nope")]
    assert main(["generate", "a cat left of a dog", *lora, "--out", str(tmp_path / "g")]) == 2
    assert "no LoRA adapter at" in _error_lines(capsys.readouterr().err)[0]
    assert main(["shapes", "bench", "--reward-model", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "no reward model at" in _error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "g").exists() and not (tmp_path / "b").exists()


def test_the_shipped_weight_names_pass_the_folder_checks():
    """--reward-model spatialscore and --lora shapes-grpo name the shipped weights, not folders."""
    import argparse

    from l2s.cli.checks import _check_weights

    _check_weights(argparse.Namespace(reward_model="spatialscore", lora="shapes-grpo"))


def test_misspelt_shipped_weight_names_get_a_suggestion(tmp_path, capsys):
    """--lora shapes-grp / --reward-model spatialscor say which shipped name was meant."""
    import argparse

    from l2s.cli.checks import _check_weights
    from l2s.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"LoRA adapter not found: shapes-grp \(did you mean 'shapes-grpo'\?\)"):
        _check_weights(argparse.Namespace(lora="shapes-grp"))
    with pytest.raises(ModelLoadError, match=r"did you mean 'shapes-grpo'"):
        _check_weights(argparse.Namespace(lora="Shapes-GRPO"))
    with pytest.raises(ModelLoadError, match=r"reward model not found: spatialscor \(did you mean 'spatialscore'\?\)"):
        _check_weights(argparse.Namespace(reward_model=Path("spatialscor")))
    (tmp_path / "spatialscor").mkdir()         # an existing folder of that name is a path, not a typo
    with pytest.raises(ModelLoadError, match="no reward model at"):
        _check_weights(argparse.Namespace(reward_model=str(tmp_path / "spatialscor")))
