"""The process group of a spread run and this process's place in it.

The launchers say who a process is in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`world`
joins their process group on first use (gloo for the small objects the processes exchange, and
NCCL for CUDA tensors when there is a GPU) and, without a launcher, is a world of one process, so
code written for N processes runs unchanged in one.
"""
from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .launcher import launched

T = TypeVar("T")
# Ranks wait for the slowest one at the end of a run, which can take hours on a big job; a rank
# that dies ends the group through the launcher, not through this timeout.
WAIT = timedelta(hours=24)
JOIN_NOTICE = timedelta(seconds=30)   # a join slower than this says what it waits for


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
