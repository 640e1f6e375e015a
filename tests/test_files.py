"""l2s.files: the output-folder lock (across real processes), atomic writes and damaged state files."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from l2s.errors import L2SError
from l2s.files import (
    KIND_FILE,
    LOCK_FILE,
    DamagedFileError,
    FolderBusyError,
    atomic_write_bytes,
    described_changes,
    follow_umask,
    fsync_append,
    output_lock,
    process_umask,
    read_jsonl_lines,
    read_state_json,
    remove_outputs,
)

HOLD = """
import sys, time
from l2s.files import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "out"
    holder = _holder(folder)
    try:
        with pytest.raises(FolderBusyError, match=rf"being written by another l2s process \(pid {holder.pid}\)"):
            with output_lock(folder):
                pytest.fail("entered a folder another process holds")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The lock file (with the dead holder's pid) stays behind; the kernel dropped the lock itself.
    assert (folder / LOCK_FILE).read_text().strip() == str(holder.pid)
    with output_lock(folder):
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (folder / LOCK_FILE).read_text() == ""  # released: no pid left to mislead


def test_one_process_may_nest_its_own_lock(tmp_path):
    with output_lock(tmp_path / "out"):
        with output_lock(tmp_path / "out" / ".." / "out"):  # the same folder, spelled otherwise
            pass
        holder = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "out")], capture_output=True,
                                text=True, timeout=60)
        assert holder.returncode != 0 and "FolderBusyError" in holder.stderr  # still held after the inner exit


def test_unusable_output_folders_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(L2SError, match="is a file, not a folder"):
        with output_lock(tmp_path / "file"):
            pass
    with pytest.raises(L2SError, match="cannot create"):
        with output_lock(tmp_path / "file" / "below"):
            pass


def test_a_folder_holds_one_kind_of_output(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, kind="make-data"):
        (out / "dataset.json").write_text("{}")
        with output_lock(out, kind="make-data"):   # the library under the CLI: the same kind
            pass
    assert (out / KIND_FILE).read_text() == "make-data\n"
    with output_lock(out, kind="make-data"):       # a rerun of its own kind
        pass
    for other in ("train", "grpo", "eval"):
        with pytest.raises(L2SError, match=r"holds a map dataset \('make-data'\); this run writes .*use another --out"):
            with output_lock(out, kind=other):
                pytest.fail("entered a folder of another kind")
    with pytest.raises(L2SError, match="holds a map dataset"):
        with output_lock(tmp_path / "new", kind="train"):
            with output_lock(tmp_path / "new", kind="train"):
                pass
            with output_lock(out, kind="train"):       # nested, another folder
                pass
    with pytest.raises(ValueError, match="unknown output kind"):
        with output_lock(tmp_path / "x", kind="typo"):
            pass


def test_a_folder_with_files_l2s_did_not_mark_is_refused(tmp_path):
    # A user's own files (or a run from before folders were marked): never written over or cleared.
    (tmp_path / "image.png").write_text("mine")
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(L2SError, match=r"holds files l2s did not write \(image.png, report.json\): use an empty "
                                       r"or new --out .*echo generate > .*\.l2s\.kind"):
        with output_lock(tmp_path, kind="generate"):
            pytest.fail("entered a folder of the user's files")
    assert not (tmp_path / KIND_FILE).exists() and (tmp_path / "image.png").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "report.json"]   # not even a lock file
    (tmp_path / KIND_FILE).write_text("generate\n")        # adopted as the hint says
    with output_lock(tmp_path, kind="generate"):
        pass
    (tmp_path / KIND_FILE).write_text("something-new\n")
    with pytest.raises(DamagedFileError, match="names no kind of output l2s knows .'something-new'.; delete it"):
        with output_lock(tmp_path, kind="generate"):
            pass


def test_hidden_files_do_not_make_a_folder_taken(tmp_path):
    (tmp_path / ".DS_Store").write_text("x")
    with output_lock(tmp_path, kind="eval"):
        pass
    assert (tmp_path / KIND_FILE).read_text() == "eval\n"


def test_a_run_that_wrote_nothing_leaves_no_claim(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(L2SError, match="bad data"):
        with output_lock(out, kind="train"):
            raise L2SError("bad data")      # failed before writing anything
    assert not out.exists()                 # the folder it made went again
    with pytest.raises(L2SError, match="bad data"):
        with output_lock(tmp_path / "a" / "b" / "out", kind="train"):
            raise L2SError("bad data")
    assert not (tmp_path / "a").exists()    # with the parents it made
    with output_lock(tmp_path / "quiet", kind="train"):
        pass                                # a run that succeeded without writing keeps its folder
    assert (tmp_path / "quiet" / KIND_FILE).is_file()
    out.mkdir()                             # the user's own empty folder stays, claimable by any kind
    with pytest.raises(L2SError, match="bad data"):
        with output_lock(out, kind="train"):
            raise L2SError("bad data")
    assert out.is_dir()
    with output_lock(out, kind="make-data"):
        (out / "dataset.json").write_text("{}")
    assert (out / KIND_FILE).read_text() == "make-data\n"


def test_ctrl_c_before_anything_was_saved_says_there_is_nothing_to_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt) as caught:
        with output_lock(tmp_path / "new", kind="train"):
            raise KeyboardInterrupt
    assert "before anything was saved" in caught.value.l2s_message and not (tmp_path / "new").exists()
    with pytest.raises(KeyboardInterrupt) as caught:
        with output_lock(tmp_path / "kept", kind="train") as out:
            (out / "log.jsonl").write_text("{}\n")
            raise KeyboardInterrupt
    assert not hasattr(caught.value, "l2s_message")     # the generic "rerun to resume" line is right


def test_removing_an_earlier_run_says_what_went_in_one_line(tmp_path, caplog):
    (tmp_path / "log.jsonl").write_text("{}")
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.safetensors").write_text("x")
    (tmp_path / "mine.txt").write_text("kept")
    assert remove_outputs(tmp_path, ["best", "last", "log.jsonl"], "starting over") == ["best/", "log.jsonl"]
    assert caplog.messages == [f"starting over: removed best/, log.jsonl from {tmp_path}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    caplog.clear()
    assert remove_outputs(tmp_path, ["best", "log.jsonl"], "starting over") == [] and not caplog.messages


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"one")
    atomic_write_bytes(tmp_path / "a.bin", b"two")
    assert (tmp_path / "a.bin").read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_failed_write_keeps_the_earlier_file_leaves_no_temporary_one_and_names_the_file(tmp_path, full_disk):
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"earlier")
    full_disk("state.json.tmp")
    with pytest.raises(OSError) as failed:
        atomic_write_bytes(path, b"later")
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(path)   # not the .tmp, not None
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_ctrl_c_mid_write_keeps_the_earlier_file_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    import l2s.files.atomic as atomic

    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"earlier")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)   # the half-written temporary file is there
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"later")
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_append_names_the_file_and_the_next_append_drops_its_torn_half(tmp_path, full_disk):
    log = tmp_path / "log.jsonl"
    fsync_append(log, ['{"a": 1}\n'])
    full_disk("log.jsonl")
    with pytest.raises(OSError) as failed:
        fsync_append(log, ['{"b": 2}\n'])
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(log)
    fsync_append(log, ['{"c": 3}\n'])
    assert [row for _, row in read_jsonl_lines(log, "")] == [{"a": 1}, {"c": 3}]


def test_a_link_to_a_missing_folder_is_named_as_such(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(L2SError, match=r"out is a link to .*gone, which does not exist"):  # not "File exists"
        with output_lock(tmp_path / "out"):
            pass


def test_follow_umask_gives_saved_weights_the_mode_a_plain_open_would(tmp_path, umask_022):
    from safetensors.torch import save_file
    import torch

    (tmp_path / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "sub" / "model.safetensors"))
    (tmp_path / "private.key").write_text("x")
    os.chmod(tmp_path / "private.key", 0o600)
    assert umask_022(tmp_path)["sub/model.safetensors"] == 0o600   # what safetensors does on its own
    save_file({"w": torch.zeros(2)}, str(tmp_path / "chosen.safetensors"))
    os.chmod(tmp_path / "chosen.safetensors", 0o640)                 # a mode someone chose
    follow_umask(tmp_path)
    assert umask_022(tmp_path) == {"sub/model.safetensors": 0o644, "private.key": 0o600,   # weights only,
                                   "chosen.safetensors": 0o640}                            # and only 0600 ones
    assert process_umask() == 0o022 and os.umask(0o022) == 0o022   # read, not changed


def test_jsonl_damage_names_the_line_and_a_torn_last_line_is_what_a_kill_leaves(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert [row for _, row in read_jsonl_lines(path, fix="fix it")] == [{"a": 1}, {"a": 2}]
    with pytest.raises(DamagedFileError, match=r"rows.jsonl line 3 is damaged .*; fix it"):
        read_jsonl_lines(path, fix="fix it", torn_tail_ok=False)
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(DamagedFileError, match="line 2 is damaged"):
        read_jsonl_lines(path, fix="fix it")
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DamagedFileError, match="line 2 is not a JSON object"):
        read_jsonl_lines(path, fix="fix it")
    assert read_jsonl_lines(tmp_path / "missing.jsonl", fix="") == []
    # a reader that redoes what a line recorded hears of each damaged line and reads the rest
    path.write_text('{"a": 1}\n{"a": \n[1, 2]\n{"a": 4}\n{"a": 5')
    damaged = []
    assert [row for _, row in read_jsonl_lines(path, fix="", on_damaged=damaged.append)] == [{"a": 1}, {"a": 4}]
    assert damaged == [2, 3]      # the torn last line is left out quietly


def test_an_append_after_a_torn_last_line_drops_it_first(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')                 # a writer killed mid-append
    fsync_append(path, ['{"a": 3}\n'])
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'
    path.write_text('{"a": ')                             # torn first line
    fsync_append(path, ['{"a": 4}\n'])
    assert [row for _, row in read_jsonl_lines(path, fix="")] == [{"a": 4}]
    fsync_append(tmp_path / "new.jsonl", ['{"a": 5}\n'])  # a new file, and whole lines, are left alone
    fsync_append(tmp_path / "new.jsonl", ['{"a": 6}\n'])
    assert (tmp_path / "new.jsonl").read_text() == '{"a": 5}\n{"a": 6}\n'


def test_a_damaged_state_file_says_how_to_recover(tmp_path):
    assert read_state_json(tmp_path / "missing.json", fix="x") is None
    (tmp_path / "state.json").write_bytes(b'{"chunks": {"0": ')
    with pytest.raises(DamagedFileError, match=r"state.json is damaged \(JSONDecodeError.*\); use --restart"):
        read_state_json(tmp_path / "state.json", fix="use --restart")
    (tmp_path / "state.json").write_bytes(b"\xff\xfe")
    with pytest.raises(DamagedFileError, match="UnicodeDecodeError"):
        read_state_json(tmp_path / "state.json", fix="")
    (tmp_path / "state.json").write_text(json.dumps({"ok": True}))
    assert read_state_json(tmp_path / "state.json", fix="") == {"ok": True}



def test_atomic_torch_save_is_whole_or_nothing(tmp_path):
    import torch

    from l2s.files import atomic_torch_save

    path = tmp_path / "state.pt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    with pytest.raises(Exception):
        atomic_torch_save({"x": lambda: 0}, path)      # cannot be pickled: nothing is written
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_weights_digest_follows_content_not_copies_and_skips_hidden_files(tmp_path):
    from l2s.files import weights_digest

    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"abc")
    (folder / "sub" / "config.json").write_text("{}")
    first = weights_digest(folder)
    shutil.copytree(folder, tmp_path / "copy")
    (tmp_path / "copy" / ".l2s.lock").write_text("1234")
    assert weights_digest(tmp_path / "copy") == first
    (folder / "weights.bin").write_bytes(b"abd")
    assert weights_digest(folder) != first
    assert weights_digest(folder / "weights.bin") != weights_digest(tmp_path / "copy" / "weights.bin")
    assert weights_digest(tmp_path / "missing") is None


def test_weights_digest_of_large_files_follows_size_and_mtime_not_content(tmp_path, monkeypatch):
    import os

    import l2s.files
    from l2s.files import weights_digest

    monkeypatch.setattr(l2s.files.digests, "CONTENT_DIGEST_LIMIT", 2)     # every file here counts as large
    shard = tmp_path / "shard.bin"
    shard.write_bytes(b"abc")
    os.utime(shard, ns=(1_000_000_000, 1_000_000_000))
    first = weights_digest(shard)
    shard.write_bytes(b"abd")                                      # same size and time: not seen (by design)
    os.utime(shard, ns=(1_000_000_000, 1_000_000_000))
    assert weights_digest(shard) == first
    os.utime(shard, ns=(2_000_000_000, 2_000_000_000))            # saved again: seen
    assert weights_digest(shard) != first
    shard.write_bytes(b"abcd")
    os.utime(shard, ns=(1_000_000_000, 1_000_000_000))            # another size: seen
    assert weights_digest(shard) != first


def test_runs_recorded_before_fingerprints_still_resume_and_a_whole_last_record_is_kept(tmp_path):
    from l2s.files import fsync_append, unrecorded_digests

    earlier = {"steps": 2}
    assert unrecorded_digests(earlier, {"steps": 2, "lora_digest": "ab"}) == earlier
    assert unrecorded_digests({**earlier, "lora_digest": "cd"}, {"steps": 2, "lora_digest": "ab"})["lora_digest"] == "ab"
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}')        # the last record lost only its newline
    fsync_append(log, ['{"epoch": 3}'])
    assert log.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}', '{"epoch": 3}']


def test_a_lock_on_a_folder_removed_meanwhile_is_refused(tmp_path, monkeypatch):
    import l2s.files

    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open

    def open_then_lose_the_folder(path, *args):   # another run's cleanup between open and flock
        fd = real_open(path, *args)
        os.unlink(path)
        return fd
    monkeypatch.setattr(l2s.files.folders.os, "open", open_then_lose_the_folder)
    with pytest.raises(FolderBusyError, match="was removed by another l2s process while this one opened it"):
        with output_lock(out, kind="eval"):
            pytest.fail("held a lock on a removed file")


def test_described_changes_names_each_change_and_counts_long_lists():
    saved = {"lr": 0.001, "classifier": {"channels": 20, "layer_layout": [f"block.{i}.attn" for i in range(5)]}}
    current = {"lr": 0.002, "classifier": {"channels": 16, "layer_layout": [f"block.{i}.attn" for i in range(4)]}}
    shown = described_changes(saved, current, ["classifier", "lr"])
    assert shown == ("classifier.channels: 20 -> 16, classifier.layer_layout: 5 entries -> 4 entries, "
                     "lr: 0.001 -> 0.002")
    same_length = {"classifier": {"layer_layout": [f"other.{i}.attn" for i in range(5)]}}
    assert described_changes(saved, same_length, ["classifier"]) == \
        "classifier.channels: 20 -> (absent), classifier.layer_layout"      # same length: the name alone
    # An option left out (None) is "unset": the run took its default, which "None" did not say.
    assert described_changes({"steps": None}, {"steps": 12}, ["steps"]) == "steps: unset -> 12"
