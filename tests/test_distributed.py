"""l2s.distributed: a world of one without a launcher; under ``torchrun`` with 2 CPU processes
(gloo): shares, gathers, rank 0's errors on every rank, gradient sums, a refusal of processes
started with different arguments, which process says an error line, and the output lock that rank 0
holds for the group (a second, independent writer is refused while the group runs); a join that
waits long says where it waits."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from l2s.distributed import World, line_to_say, output_lock, world
from l2s.errors import L2SError
from l2s.files import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N ARGS`` with one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "L2S_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(processes), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def free_port() -> int:
    """A local port nobody listens on (free once the probe socket closes)."""
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_a_launcher_the_world_is_one_process(tmp_path):
    group = world()
    assert (group.rank, group.size, group.is_main, group.spread) == (0, 1, True, False)
    assert group.share([1, 2, 3]) == [1, 2, 3] and group.gather("x") == ["x"] and group.broadcast(5) == 5
    assert group.device("cuda") == "cuda" and group.on_main(lambda: 7) == 7
    with output_lock(tmp_path / "out") as held:
        assert (held / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_rank_takes_every_nth_item():
    assert World(1, 3).share(list("abcdefg")) == ["b", "e"]
    assert World(1, 2, 1).device("cuda") == "cuda:1" and World(1, 2, 1).device("cpu") == "cpu"


SCRIPT = textwrap.dedent('''
    import json, subprocess, sys, time
    from pathlib import Path
    import torch
    from l2s.distributed import line_to_say, output_lock, refuse_different_commands, world
    from l2s.errors import L2SError, UsageError
    from l2s.files import FolderBusyError

    held, free, report = sys.argv[1:4]
    group = world()
    out = {"rank": group.rank, "size": group.size, "share": group.share(list(range(7))),
           "gather": group.gather(group.rank * 10), "broadcast": group.broadcast(f"from rank {group.rank}")}
    def refuse():
        raise L2SError("rank 0 says no")
    try:
        group.on_main(refuse)
    except L2SError as error:
        out["error"] = str(error)
    refuse_different_commands(["eval", "--seeds", "0-1"])         # the same command: nothing to say
    try:
        refuse_different_commands(["eval", "--seeds", "0-1" if group.rank == 0 else "2-3"])
    except UsageError as error:
        out["different"] = str(error)
    # A warning and an error line: rank 0 says them; rank 1 stays silent on both (the error said
    # after the warning does not hide it), names itself on its own.
    out["said"] = [line_to_say("l2s: warning: for all"), line_to_say("l2s: error: for all")] if group.rank == 0 else []
    group.barrier()
    if group.rank == 1:
        lines = ("l2s: warning: for all", "l2s: error: for all", "l2s: error: mine")
        out["said"] = [line_to_say(line) for line in lines]
    group.barrier()
    if group.rank == 0:       # rank 1 asks before rank 0 says the same line: it waits, then stays silent
        time.sleep(0.5)
    out["said"].append(line_to_say("l2s: error: late"))
    grads = [torch.full((2,), float(group.rank + 1)), torch.tensor([10.0 * (group.rank + 1)])]
    group.sum_(grads)
    out["sum"] = [t.tolist() for t in grads]
    try:
        with output_lock(held):
            out["busy"] = None
    except FolderBusyError as error:
        out["busy"] = str(error)
    with output_lock(free):
        out["holder"] = (Path(free) / ".l2s.lock").read_text().strip()
        if group.rank == 1:  # an independent writer while the group holds the folder
            second = "from l2s.files import output_lock\\nwith output_lock(%r): pass" % free
            out["second"] = subprocess.run([sys.executable, "-c", second], capture_output=True, text=True).stderr
    out["pid"] = __import__("os").getpid()
    Path(report, f"rank{group.rank}.json").write_text(json.dumps(out))
''')


def test_two_processes_share_gather_and_lock_as_one_group(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    held, free = tmp_path / "held", tmp_path / "free"
    free.mkdir()   # the user's folder: its lock file stays after the run (a folder the lock made would go)
    hold = "import sys, time\nfrom l2s.files import output_lock\nwith output_lock(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = torchrun([str(tmp_path / "script.py"), str(held), str(free), str(tmp_path)])
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["size"] for r in ranks] == [2, 2]
    assert ranks[0]["share"] == [0, 2, 4, 6] and ranks[1]["share"] == [1, 3, 5]
    assert ranks[0]["gather"] == ranks[1]["gather"] == [0, 10]
    assert ranks[0]["broadcast"] == ranks[1]["broadcast"] == "from rank 0"
    assert ranks[0]["error"] == ranks[1]["error"] == "rank 0 says no"
    assert ranks[0]["sum"] == ranks[1]["sum"] == [[3.0, 3.0], [30.0]]
    # Processes started with different arguments are refused on every rank; one of them says so.
    assert ranks[0]["different"] == ranks[1]["different"] == (
        "the processes of this run were started with different arguments (rank 1 alone: --seeds 2-3; rank 0 alone: "
        "--seeds 0-1): start every process with the same command")
    assert ranks[0]["said"] == ["l2s: warning: for all", "l2s: error: for all", "l2s: error: late"]
    assert ranks[1]["said"] == [None, None, "l2s: error: rank 1: mine", None]
    assert line_to_say("l2s: error: alone") == "l2s: error: alone"   # no group: every process says its own
    # A folder another process writes is refused on every rank, naming that process.
    for rank in ranks:
        assert f"(pid {holder.pid})" in rank["busy"]
    # Rank 0 holds the group's folder; an independent writer is refused while the group runs.
    assert ranks[0]["holder"] == ranks[1]["holder"] == str(ranks[0]["pid"])
    assert "FolderBusyError" in ranks[1]["second"] and f"(pid {ranks[0]['pid']})" in ranks[1]["second"]
    assert (free / LOCK_FILE).read_text() == ""  # let go when the group ended


def test_a_line_another_process_said_after_waiting_is_not_said_again_by_the_first(monkeypatch):
    """A process that gave up waiting for its machine's first one says the line, naming itself; the
    first, meeting the same line later (a busy machine), and a third that gave up too stay silent."""
    import torch.distributed as dist
    from datetime import timedelta

    from l2s.distributed import say_once

    store = dist.HashStore()   # the launcher's store, shared by the machine's processes
    monkeypatch.setattr(say_once, "_store", lambda: store)
    monkeypatch.setattr(say_once, "SAID_WAIT", timedelta(0))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("GROUP_RANK", "0")

    def said(rank: int, line: str) -> str | None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        return line_to_say(line)

    assert said(1, "l2s: error: for all") == "l2s: error: rank 1: for all"
    assert said(0, "l2s: error: for all") is None and said(2, "l2s: error: for all") is None
    # the first says its own line as often as it meets it; another process then stays silent
    assert said(0, "l2s: error: mine") == said(0, "l2s: error: mine") == "l2s: error: mine"
    assert said(1, "l2s: error: mine") is None


def test_arguments_that_differ_between_processes_are_named_with_their_options():
    from l2s.distributed import argument_difference

    first = ["eval", "--steps", "4", "--seeds", "0-3", "--quiet", "--out", "run"]
    assert argument_difference(1, ["eval", "--steps", "4", "--seeds", "4", "--quiet", "--out", "run"], first) == (
        "rank 1 alone: --seeds 4; rank 0 alone: --seeds 0-3")    # not a bare '4', which --steps has too
    assert argument_difference(2, first + ["--restart"], first) == "rank 2 alone: --restart; rank 0 alone: nothing"
    assert argument_difference(1, ["eval", "--out", "run", "--steps", "4", "--seeds", "0-3", "--quiet"], first) == (
        "rank 1 has them in another order")


def test_more_processes_on_a_machine_than_gpus_are_refused_by_every_process(monkeypatch):
    import torch.distributed as dist

    from l2s.distributed import group
    from l2s.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group it cannot serve"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for local_rank in ("0", "1"):   # rank 0 too: its GPU exists, but the machine's first process says it
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(UsageError, match=r"starts 2 processes but shows 1 GPU\(s\).*--nproc_per_node 1\)"):
            group._join()


def test_every_documented_accelerate_launch_of_several_processes_passes_multi_gpu():
    """Without --multi_gpu accelerate starts one process a machine unless its config or several GPUs
    turn multi-GPU on (below): the docs' two-machine line ran alone on machines of one GPU or none."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = [line for doc in docs for line in doc.read_text().replace("\\\n", " ").splitlines()
                if "accelerate launch" in line and "--num_processes" in line]
    assert commands and [line for line in commands if "--multi_gpu" not in line] == []


@pytest.mark.parametrize("options, alone", [(["--cpu", "--num_processes", "2"], [True]),
                                             (["--num_processes", "2"], [True]), (["--cpu"], [False]),
                                             (["--multi_gpu", "--num_processes", "2"], [False, False])])
def test_an_accelerate_launch_of_several_that_starts_one_is_told_apart(tmp_path, options, alone):
    """What accelerate's launcher really sets: its --cpu (or --num_processes without --multi_gpu)
    starts one process whatever --num_processes says; --multi_gpu starts them all, CPU-only too."""
    pytest.importorskip("accelerate")
    probe = tmp_path / "probe.py"
    probe.write_text("from l2s.distributed import accelerate_started_one\nprint(accelerate_started_one())\n")
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")
    env = {**{k: v for k, v in os.environ.items() if k not in names}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), *options, str(probe)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # one word per process; the processes' writes may interleave on the pipe
    assert [word == "True" for word in re.findall("True|False", done.stdout)] == alone, done.stdout


def test_sums_are_a_no_op_alone():
    grads = [torch.ones(3)]
    world().sum_(grads)
    assert grads[0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(L2SError, match="no"):
        world().on_main(lambda: (_ for _ in ()).throw(L2SError("no")))


def test_a_join_that_waits_says_where_it_waits():
    """A rank whose master never comes (here: nobody listens on the port) says after the notice
    delay where it waits; it goes on waiting until stopped."""
    port = free_port()
    code = ("from datetime import timedelta\nimport l2s.distributed.group as d\n"
            "d.JOIN_NOTICE = timedelta(seconds=1)\nd.world()\n")
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    # Its own session, so the kill reaches every process it started; the reader gives up after 30 s,
    # so a missing notice fails instead of hanging.
    waiting = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    timer = threading.Timer(30, os.killpg, (waiting.pid, signal.SIGKILL))
    timer.start()
    try:
        line = next((x.strip() for x in iter(waiting.stderr.readline, "") if x.startswith("l2s:")), None)
    finally:
        timer.cancel()
        os.killpg(waiting.pid, signal.SIGKILL)
        waiting.wait()
    assert line == (f"l2s: rank 1 is waiting for the 2 processes of this run to meet at 127.0.0.1:{port} "
                    "(MASTER_ADDR:MASTER_PORT); Ctrl-C stops it")


def test_a_quick_join_says_nothing(capsys):
    from datetime import timedelta

    from l2s.distributed.group import _notice_if_slow

    with _notice_if_slow(timedelta(seconds=0.2)):
        pass
    __import__("time").sleep(0.4)
    assert capsys.readouterr().err == ""
