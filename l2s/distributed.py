"""Runs spread over processes and machines: ``torchrun`` or ``accelerate launch`` start N copies
of one command, and each copy does its share of the work.

The launchers say who a process is in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`world`
joins their process group on first use (gloo for the small objects the processes exchange, and
NCCL for CUDA tensors when there is a GPU) and, without a launcher, is a world of one process, so
code written for N processes runs unchanged in one.

An output folder of a spread run is locked by rank 0 alone (:func:`output_lock` here): the other
ranks learn its verdict before any work, so a second, independent run into the folder is refused
in every one of its processes, and a dead rank ends the whole group through the launcher, which
drops the lock with its holder.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from l2s import files

T = TypeVar("T")
# Ranks wait for the slowest one at the end of a run, which can take hours on a big job; a rank
# that dies ends the group through the launcher, not through this timeout.
WAIT = timedelta(hours=24)
SAID_WAIT = timedelta(seconds=3)   # how long a process waits to learn its machine said its line
# What a process other than its machine's first adds to a line's count to say the line itself: the
# first process adds 1 per saying and never reaches it, so either one learns the other said it.
OTHER_CLAIM = 1 << 40
JOIN_NOTICE = timedelta(seconds=30)   # a join slower than this says what it waits for
# logging ``extra`` of a warning every process of a spread run meets alike (the shipped model missing):
# the command line says it once per machine (:func:`line_to_say`), not once per process.
EVERY_PROCESS = {"l2s_every_process": True}


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (``size`` 1: a run on its own)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``size``-th one from position ``rank`` (deterministic)."""
        return list(items[self.rank::self.size])

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
        if not self.spread:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.spread:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_(self, tensors: Sequence[Any]) -> None:
        """Replace each tensor (all on one device) by its sum over the ranks, in one all-reduce."""
        if not self.spread or not tensors:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(list(tensors))
        dist.all_reduce(flat)
        for tensor, summed in zip(tensors, _unflatten_dense_tensors(flat, list(tensors))):
            tensor.copy_(summed)

    def barrier(self) -> None:
        if self.spread:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 only; its result, or the user error it raised, on every rank."""
        from l2s.errors import L2SError

        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", work())
            except L2SError as error:
                outcome = ("error", error)
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise value
        return value

    def bar_label(self, desc: str) -> str:
        """A progress bar's name: rank 0's bar counts its own share of a spread run, and says so."""
        return f"{desc} (rank {self.rank} of {self.size})" if self.spread else desc

    def device(self, device: str) -> str:
        """``device`` for this rank: a bare ``cuda`` becomes this machine's GPU ``cuda:LOCAL_RANK``."""
        return f"cuda:{self.local_rank}" if self.spread and device == "cuda" else device


_WORLD: World | None = None


def launched() -> bool:
    """Whether a launcher started this process as one of several (read from the environment:
    nothing is joined or imported)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


# What MPI launchers (accelerate's --mpirun_hostfile) name the process count with, in place of WORLD_SIZE.
MPI_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def accelerate_started_one() -> bool:
    """Whether ``accelerate launch`` was asked for several processes but started this one alone: its
    simple launcher (``--cpu``, or ``--num_processes`` without ``--multi_gpu``) runs one process and
    sets the rendezvous address of several (``MASTER_ADDR``), but no ``WORLD_SIZE``."""
    env = os.environ
    return ("ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and not launched()
            and not any(name in env for name in MPI_SIZES))


def first_on_machine() -> bool:
    """Whether this process is its machine's first (``LOCAL_RANK`` 0; any process of no launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 if launched() else True


def line_to_say(line: str) -> str | None:
    """What this process prints of a line every process may meet (the error it ends on, a
    warning); None: nothing.

    Alone, a process says its own. Under a launcher each machine's first process (``LOCAL_RANK``
    0) says it; another says it only if that one did not say the same within :data:`SAID_WAIT`
    (then naming its rank), so an error every process meets shows once per machine and one
    process's own error is not lost. Who says a line is settled by one atomic count in the store,
    so the first process, reaching the line after another gave up waiting, does not say it again.
    Without a joined group to compare through (an error before joining), the first process alone
    says it."""
    if not launched():
        return line
    # A key per line: a warning then an error said at once must not leave only the error to compare.
    machine, digest = os.environ.get("GROUP_RANK") or socket.gethostname(), hashlib.sha256(line.encode()).hexdigest()
    store, key = _store(), f"l2s/said/{machine}/{digest[:16]}"
    if first_on_machine():
        return None if _said_by_another(store, key) else line
    if store is None or _said_on_machine(store, key) or not _claimed(store, key):
        return None
    rank = os.environ.get("RANK", "?")
    return line.replace("l2s: error: ", f"l2s: error: rank {rank}: ", 1)


def _said_by_another(store, key: str) -> bool:
    """Counts a saying of the machine's first process; whether another process said the line already."""
    count = _quietly(lambda: store.add(key, 1)) if store is not None else None
    return count is not None and count > OTHER_CLAIM


def _claimed(store, key: str) -> bool:
    """Whether this process, not its machine's first, is the one to say the line: no other said it
    (a store that failed settles nothing: said rather than lost)."""
    return _quietly(lambda: store.add(key, OTHER_CLAIM)) in (OTHER_CLAIM, None)


def _said_on_machine(store, key: str) -> bool:
    """Whether a process of this machine (its first, as a rule) says the line of ``key`` within
    :data:`SAID_WAIT` (polled: a blocking wait would hold off Ctrl-C and log the store's timeout)."""
    deadline = time.monotonic() + SAID_WAIT.total_seconds()
    while time.monotonic() < deadline:
        if _quietly(lambda: store.check([key])):
            return True
        time.sleep(0.05)
    return False


def _quietly(call):
    try:
        return call()
    except Exception:  # noqa: BLE001 - a store that is gone: as if nothing were said
        return None


def _store():
    """The joined group's key-value store (the launcher's), None when this process joined none."""
    if "torch.distributed" not in sys.modules:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 - no store to compare through
        return None


def refuse_different_commands(argv: Sequence[str]) -> None:
    """A spread run whose processes were started with different arguments would share out
    different work (or wait forever for a rank that finished early): refused on every rank."""
    if not launched():
        return
    from l2s.errors import UsageError

    try:
        group = world()
    except (ValueError, RuntimeError) as error:   # e.g. WORLD_SIZE set without a launcher's address
        raise UsageError(f"cannot join the launcher's processes ({str(error).splitlines()[0][:200]}): start "
                         "the command with torchrun or accelerate launch, or without WORLD_SIZE") from None
    commands = group.gather(list(argv))
    for rank, command in enumerate(commands):
        if command != commands[0]:
            raise UsageError(f"the processes of this run were started with different arguments "
                             f"({argument_difference(rank, command, commands[0])}): "
                             "start every process with the same command")


def argument_difference(rank: int, command: Sequence[str], first: Sequence[str]) -> str:
    """What rank ``rank`` was started with that rank 0 was not, and the reverse; a value is named
    with its option (``--seeds 2-3``: a bare ``2-3`` could be any number of a long command)."""
    from collections import Counter

    here, main = Counter(_with_options(command)), Counter(_with_options(first))
    only_here, only_main = (" ".join((a - b).elements()) or "nothing" for a, b in ((here, main), (main, here)))
    if only_here == only_main:
        return f"rank {rank} has them in another order"
    return f"rank {rank} alone: {only_here}; rank 0 alone: {only_main}"


def _with_options(argv: Sequence[str]) -> list[str]:
    """The arguments, an option and the value after it as one (``--seeds 0-1``)."""
    grouped: list[str] = []
    for arg in argv:
        if grouped and grouped[-1].startswith("-") and " " not in grouped[-1] and not arg.startswith("-"):
            grouped[-1] += f" {arg}"
        else:
            grouped.append(arg)
    return grouped


def world() -> World:
    """This process's :class:`World`; joins the launcher's process group on the first call."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _join()
    return _WORLD


def _join() -> World:
    if not launched():
        return World()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available() and dist.is_nccl_available():
            _refuse_more_processes_than_gpus(torch.cuda.device_count())
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"
        with _notice_if_slow(JOIN_NOTICE):
            dist.init_process_group(backend, timeout=WAIT)
        atexit.register(_leave)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def _refuse_more_processes_than_gpus(gpus: int) -> None:
    """A process takes the GPU ``cuda:LOCAL_RANK``; one past the machine's GPUs would fail alone,
    before the group it would say it through is joined. Every process of the machine knows the
    count (``LOCAL_WORLD_SIZE``), so all refuse and the machine's first says it."""
    from l2s.errors import UsageError

    processes = int(os.environ.get("LOCAL_WORLD_SIZE") or int(os.environ.get("LOCAL_RANK", "0")) + 1)
    if processes > gpus:
        raise UsageError(f"this machine starts {processes} processes but shows {gpus} GPU(s), one per process: "
                         f"start at most {gpus} per machine (torchrun --nproc_per_node {gpus}), or hide the GPUs "
                         "(CUDA_VISIBLE_DEVICES=) to run the processes on the CPU")


@contextmanager
def _notice_if_slow(after: timedelta) -> Iterator[None]:
    """A join waits up to :data:`WAIT` for the other processes (machines of one job may start
    minutes apart): past ``after``, one line says where it waits, so a wrong address shows."""
    import threading

    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    line = (f"l2s: rank {os.environ.get('RANK', '?')} is waiting for the {os.environ.get('WORLD_SIZE')} processes "
            f"of this run to meet at {where} (MASTER_ADDR:MASTER_PORT); Ctrl-C stops it")
    timer = threading.Timer(after.total_seconds(), lambda: print(line, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def output_lock(folder: str | Path, label: str = "output folder", kind: str | None = None) -> Iterator[Path]:
    """:func:`l2s.files.output_lock` for a run of every rank: rank 0 holds the folder's lock, the
    others wait for its verdict (a refusal is raised on every rank). Every rank calls it, in the
    same order; the block ends with every rank done before rank 0 lets go."""
    group = world()
    if not group.spread:
        with files.output_lock(folder, label, kind) as held:
            yield held
        return
    with ExitStack() as stack:
        held = group.on_main(lambda: stack.enter_context(files.output_lock(folder, label, kind)))
        yield held
        group.barrier()  # left out when the block raises: the launcher then ends the other ranks


__all__ = ["World", "argument_difference", "first_on_machine", "launched", "output_lock", "line_to_say",
           "refuse_different_commands", "world"]
