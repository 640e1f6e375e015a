"""Lines every process of a spread run may meet (the error it ends on, a warning), said once per
machine: who says one is settled through the launcher's key-value store."""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from datetime import timedelta

from .launcher import first_on_machine, launched

SAID_WAIT = timedelta(seconds=3)   # how long a process waits to learn its machine said its line
# What a process other than its machine's first adds to a line's count to say the line itself: the
# first process adds 1 per saying and never reaches it, so either one learns the other said it.
OTHER_CLAIM = 1 << 40
# logging ``extra`` of a warning every process of a spread run meets alike (the shipped model missing):
# the command line says it once per machine (:func:`line_to_say`), not once per process.
EVERY_PROCESS = {"l2s_every_process": True}


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
