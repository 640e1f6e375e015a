"""``l2s shapes reward-data`` / ``train-reward``: user errors are one line and exit 2; a run resumes."""
from __future__ import annotations

import json

import pytest

from l2s.cli import EXIT_USAGE, main

from .conftest import make_blob_pairs


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [["shapes", "train-reward", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "rm")],
             ["shapes", "reward-data", "--out", str(tmp_path / "p"), "--pairs", "0"],
             ["shapes", "reward-data", "--out", str(tmp_path / "p"), "--pairs", "5", "--heldout-fraction", "1.5"],
             ["shapes", "reward-data", "--out", str(tmp_path / "p"), "--pairs", "5", "--patterns", "9,9=1"]]
    for argv in cases:
        assert main(argv) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("l2s: error: "), err


@pytest.mark.parametrize("option, message", [
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
    (["--d-model", "7"], "--d-model must be a multiple of the 4 attention heads, got 7"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--joint-layers", "-1"], "--joint-layers must be 0 or more, got -1"),
])
def test_train_reward_names_the_flag_that_cannot_work_before_reading_data(option, message, tmp_path, capsys):
    argv = ["shapes", "train-reward", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "rm"), *option]
    assert main(argv) == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines() == [f"l2s: error: {message}"]


@pytest.mark.parametrize("option, message", [
    (["--heldout-fraction", "1.5"], "--heldout-fraction must be in [0, 1), got 1.5"),
    (["--images-per-family", "1"], "--images-per-family must be at least 2, got 1"),
    (["--families-per-shard", "0"], "--families-per-shard must be at least 1, got 0"),
    (["--patterns", "2,1=0"], "--patterns must weigh"),
    (["--patterns", "5,1=1"], "--patterns: unknown pattern 5,1 (OBJECTS,RELATIONS; known: 2,1; 3,2; 4,2; 4,3)"),
    (["--seed", "1000000000"], "--seed must be in [0, 10**9), got 1000000000"),
    (["--max-shards", "0"], "--max-shards must be at least 1, got 0"),
    (["--drop-fraction", "1.5"], "--drop-fraction must be in [0, 1], got 1.5"),
    (["--duplicate-fraction", "-0.5"], "--duplicate-fraction must be in [0, 1], got -0.5"),
])
def test_reward_data_names_the_flag_that_cannot_work_before_any_work(option, message, tmp_path, capsys):
    argv = ["shapes", "reward-data", "--out", str(tmp_path / "p"), "--pairs", "5", *option]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"l2s: error: {message}"), err
    assert not (tmp_path / "p").exists()


def test_train_reward_refuses_a_pair_folder_given_twice(tmp_path, capsys):
    (tmp_path / "pairs").mkdir()
    argv = ["shapes", "train-reward", "--data", str(tmp_path / "pairs"), str(tmp_path / "x" / ".." / "pairs"),
            "--out", str(tmp_path / "rm")]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    again, first = tmp_path / "x" / ".." / "pairs", tmp_path / "pairs"
    assert err == [f"l2s: error: pair folder {again} is given twice (as {first}): its pairs would count twice"]
    assert not (tmp_path / "rm").exists()


def test_train_reward_trains_reports_and_continues_a_stopped_run(tmp_path, capsys):
    make_blob_pairs(tmp_path / "pairs", n=64, heldout_every=3)   # held-out pairs of 1 and of 2 flips
    # blob prompts ("a blob on the left") have no clause the default relational design reads
    argv = ["shapes", "train-reward", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "rm"),
            "--epochs", "2", "--d-model", "16", "--loss", "bt", "--no-progress", "--design", "joint"]
    for bad in ("0", "-1"):     # a call that would train nothing is refused before any file is made
        assert main(argv + ["--stop-after", bad]) == EXIT_USAGE
        assert f"--stop-after must be a positive integer, got {bad}" in capsys.readouterr().err
    assert not (tmp_path / "rm").exists()
    assert main(argv + ["--stop-after", "1"]) == 0
    assert "stopped after epoch 1" in capsys.readouterr().err
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "" and "held-out pairwise accuracy" in err and "1 flip" in err and "2-3 flips" in err
    assert err.splitlines()[-1].startswith("l2s: wrote ") and "results.json" in err and "finished" not in err
    results = json.loads((tmp_path / "rm" / "results.json").read_text())
    assert results["settings"]["loss"] == "bt" and results["command"].startswith("l2s shapes train-reward")
    assert len((tmp_path / "rm" / "log.jsonl").read_text().splitlines()) == 2
    assert main(argv) == 0   # a finished run is scored again, and says so
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith(f"l2s: {tmp_path / 'rm'} held a finished run of 2 epochs: its best model was scored")
    assert err[-1] == f"l2s: wrote results.json in {tmp_path / 'rm'}"
    assert len((tmp_path / "rm" / "log.jsonl").read_text().splitlines()) == 2


def test_reward_data_ends_with_a_sentence_of_its_counts():
    from l2s.cli.reward import _pairs_line

    counts = {"train": 30, "train/1": 10, "train/2-3": 20, "heldout": 4, "heldout/1": 4}
    assert _pairs_line(counts, "pairs") == ("l2s: 30 training pairs (1 flip: 10, 2-3 flips: 20), "
                                            "4 held out (1 flip: 4), in pairs")
    assert _pairs_line({}, "p") == "l2s: 0 training pairs, 0 held out, in p"
