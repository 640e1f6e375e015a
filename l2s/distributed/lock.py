"""The output folder of a spread run, locked by rank 0 alone: the other ranks learn its verdict
before any work, so a second, independent run into the folder is refused in every one of its
processes, and a dead rank ends the whole group through the launcher, which drops the lock with
its holder."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from l2s import files

from .group import world


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
