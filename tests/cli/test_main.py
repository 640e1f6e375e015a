"""The ``l2s`` entry point: subcommand help and the front ends that parse their own arguments."""
import sys
import types
from datetime import timedelta

import pytest

import l2s.cli.training
from l2s.cli import main
from l2s.errors import L2SError


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("l2s: error:")]


@pytest.mark.parametrize("argv, options", [
    (["make-data", "--help"], ["--source", "--annotations", "--out"]),
    (["train", "--help"], ["--out", "--epochs", "DATASET"]),
    (["eval", "--help"], ["--prompts", "--seeds", "--mode", "--detector", "--classifier", "--images", "--rule"]),
    (["shapes", "train-model", "--help"], ["--out", "--steps"]),
])
def test_subcommand_help(argv, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: l2s " + argv[0])
    for option in options:
        assert option in text, option


def test_delegated_subcommand_gets_the_remaining_arguments(monkeypatch, capsys):
    received = []
    monkeypatch.setattr(l2s.cli.training, "train_main", lambda argv: received.append(argv) or 7)
    assert main(["train", "data", "--out", "x"]) == 7 and received == [["data", "--out", "x"]]

    def refuse(argv):
        raise L2SError("no such dataset")

    monkeypatch.setattr(l2s.cli.training, "train_main", refuse)
    code, _, err = run(["train", "data", "--out", "x"], capsys)
    assert code == 2 and error_lines(err) == ["l2s: error: no such dataset"]


def test_missing_delegated_function_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "l2s.cli.training", types.ModuleType("l2s.cli.training"))
    code, _, err = run(["make-data", "--help"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "'l2s make-data' is not available" in line and "make_data_main" in line


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--schedule", "fastt"], "argument --schedule: invalid choice: 'fastt'"),
    (["generate", "--steps", "abc", "x"], "argument --steps: invalid int value: 'abc'"),
    (["eval", "--lorra", "x"], "unrecognized arguments: --lorra x (see 'l2s eval --help')"),
    (["shapes", "bench", "--bogus"], "unrecognized arguments: --bogus (see 'l2s shapes bench --help')"),
    (["shapes", "train-classifier"], "the following arguments are required: --data, --out"),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
])
def test_usage_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("l2s: error: ") and message in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--mode", "fast"], "unrecognized arguments: --mode fast (see 'l2s generate --help')"),
    (["generate", "x", "--qui"], "unrecognized arguments: --qui (see 'l2s generate --help')"),
    (["shapes", "bench", "--mod", "x"], "unrecognized arguments: --mod x (see 'l2s shapes bench --help')"),
])
def test_an_abbreviated_option_is_not_taken_for_another(argv, message, capsys):
    # argparse would read generate's '--mode fast' as '--model fast' (eval's --mode is another option), and
    # '--qui' as --quiet while main() looks for '--quiet' itself: only whole option names are taken.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == f"l2s: error: {message}\n"


def test_under_a_launcher_a_failed_peer_and_ctrl_c_are_said_once(monkeypatch, capsys):
    from l2s.cli import INTERRUPTED, PEER_STOPPED, _guarded

    def peer_gone():
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer")

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")           # a launcher's process: it sets RANK beside WORLD_SIZE
    monkeypatch.setenv("LOCAL_RANK", "0")     # no group joined: the machine's first process says it
    assert _guarded(peer_gone) == 1 and _guarded(interrupted) == 130
    assert capsys.readouterr().err.splitlines() == [PEER_STOPPED, INTERRUPTED]
    monkeypatch.setenv("LOCAL_RANK", "1")     # the others stay silent
    assert _guarded(peer_gone) == 1 and _guarded(interrupted) == 130
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("WORLD_SIZE")          # alone, such an error is a real one
    with pytest.raises(RuntimeError, match="closed by peer"):
        _guarded(peer_gone)


def test_a_process_interrupted_alone_says_so_and_ctrl_c_of_all_is_said_once(monkeypatch, capsys):
    from l2s.cli import INTERRUPTED, _guarded
    from l2s.distributed import say_once

    import torch.distributed as dist

    stores = [dist.HashStore()]   # the launcher's store, through which a machine's processes learn what one said
    monkeypatch.setattr(say_once, "_store", lambda: stores[-1])
    monkeypatch.setattr(say_once, "SAID_WAIT", timedelta(seconds=0.1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("GROUP_RANK", "0")

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setenv("LOCAL_RANK", "1")     # kill -INT of rank 1 alone: its machine's first said nothing
    assert _guarded(interrupted) == 130 and capsys.readouterr().err.splitlines() == [INTERRUPTED]
    stores.append(dist.HashStore())           # another run
    monkeypatch.setenv("LOCAL_RANK", "0")     # Ctrl-C reaches every process: the first says it ...
    assert _guarded(interrupted) == 130
    monkeypatch.setenv("LOCAL_RANK", "1")     # ... and the others, having seen it said, do not
    assert _guarded(interrupted) == 130 and capsys.readouterr().err.splitlines() == [INTERRUPTED]


def test_under_a_launcher_a_one_process_command_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    from l2s.cli import _one_process_only

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    # N copies of generate would write one folder, all but one refused by its lock without a word
    code, _, err = run(["generate", "a red circle left of a blue square", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and error_lines(err) == [_one_process_only(["generate"])] and not (tmp_path / "out").exists()
    assert "'l2s generate' runs in one process: start it without torchrun" in err and "eval, make-data" in err
    assert "'l2s shapes train-model' runs in one process" in _one_process_only(["shapes", "train-model", "--out", "x"])
    for argv in (["eval"], ["shapes", "bench"], ["shapes", "grpo"], ["train", "d"], ["generate", "--help"], ["bogus"]):
        assert _one_process_only(argv) is None, argv
    monkeypatch.delenv("WORLD_SIZE")
    assert _one_process_only(["generate", "x"]) is None


@pytest.mark.parametrize("argv", [["eval", "--help"], ["train", "--help"], ["--version"], ["generate", "-h"]])
def test_under_a_launcher_help_and_version_are_printed_once_a_machine(monkeypatch, capsys, argv):
    """'torchrun --nproc_per_node 8 -m l2s.cli eval --help' printed the help 8 times."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(argv) == 0 and capsys.readouterr() == ("", "")
    monkeypatch.setenv("LOCAL_RANK", "0")   # each machine's first process prints it
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and capsys.readouterr().out


def test_a_world_size_set_by_the_shell_not_a_launcher_is_named_in_the_refusal(monkeypatch, tmp_path, capsys):
    """No launcher started the process (no RANK), so 'start it without torchrun' misled: it was."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")   # inherited too: not a reason to leave --help unsaid
    code, _, err = run(["generate", "a red circle left of a blue square", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and error_lines(err) == ["l2s: error: WORLD_SIZE=4 in the environment says a launcher started "
                                              "'l2s generate' as one of several, but no launcher's RANK is set; "
                                              "unset it: env -u WORLD_SIZE l2s generate ... ('l2s generate' runs in "
                                              "one process)"]
    assert not (tmp_path / "out").exists()
    # A command that spreads would try to join a group no launcher made: the same line, not torch's.
    code, _, err = run(["eval", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and error_lines(err) == ["l2s: error: WORLD_SIZE=4 in the environment says a launcher started "
                                              "'l2s eval' as one of several, but no launcher's RANK is set; unset "
                                              "it: env -u WORLD_SIZE l2s eval ... (to spread it, start it with "
                                              "torchrun or accelerate launch)"]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0 and "usage: l2s eval" in capsys.readouterr().out


def test_an_accelerate_launch_that_started_one_of_several_says_so_in_one_line(monkeypatch, capsys):
    from l2s.cli import _alone_under_accelerate

    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")      # what 'accelerate launch --cpu --num_processes 2' sets
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--no-such-option"])
    warning, refusal = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and refusal.startswith("l2s: error: unrecognized arguments")
    assert warning == _alone_under_accelerate(["eval"]) and "accelerate launch --multi_gpu --num_processes N" in warning
    assert _alone_under_accelerate(["shapes", "grpo"]) == warning
    for argv in (["generate", "x"], ["eval", "--help"]):     # one process is all these run
        assert _alone_under_accelerate(argv) is None, argv
    monkeypatch.delenv("MASTER_ADDR")                     # 'accelerate launch --cpu': one process was asked for
    assert _alone_under_accelerate(["eval"]) is None
