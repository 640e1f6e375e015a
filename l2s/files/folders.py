"""Output folders that nothing is lost in: one writer at a time, each folder one kind of output.

:func:`output_lock` takes an advisory exclusive lock (``flock``) on ``FOLDER/.l2s.lock`` and
writes the holder's pid into it; a second writer is refused at once. The kernel drops the lock
when its holder dies, even by SIGKILL, so a stale lock file never blocks a resumed run. POSIX
only: where ``fcntl`` is missing the lock is not taken.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from l2s.errors import L2SError

from .atomic import atomic_write_text
from .state import DamagedFileError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger("l2s.files")
LOCK_FILE = ".l2s.lock"
KIND_FILE = ".l2s.kind"  # what kind of output a folder holds: another kind is refused
# The kinds of output folder, as a refusal names them. Each command's --restart clears its own
# files only, so two kinds in one folder would mix for good.
OUTPUT_KINDS = {
    "generate": "images of 'l2s generate'",
    "eval": "an evaluation run ('l2s eval')",
    "make-data": "a map dataset ('make-data')",
    "train": "a classifier training run ('l2s train' / 'l2s shapes train-classifier')",
    "train-model": "a shapes-model training run ('l2s shapes train-model')",
    "bench": "a shapes bench run ('l2s shapes bench')",
    "reward-data": "preference pairs ('l2s shapes reward-data')",
    "train-reward": "a reward-model run ('l2s shapes train-reward')",
    "grpo": "a GRPO run ('l2s shapes grpo')",
}
_HELD: dict[Path, list[int]] = {}  # resolved folder -> [lock fd, depth]: a process may nest its own locks


class FolderBusyError(L2SError):
    """Another process is writing the output folder."""


def prepare_output_dir(folder: str | Path, label: str = "output folder") -> Path:
    """Create ``folder`` (and parents) or say in one line why it cannot be an output folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise L2SError(f"{label} {folder} is a file, not a folder")
    if folder.is_symlink() and not folder.exists():   # mkdir would only say "File exists"
        raise L2SError(f"{label} {folder} is a link to {os.readlink(folder)}, which does not exist: create that "
                       "folder, or use another")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise L2SError(f"cannot create the {label} {folder}: {error.strerror or error}") from None
    return folder


@contextmanager
def output_lock(folder: str | Path, label: str = "output folder", kind: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created when missing) for the ``with`` block.

    Raises :class:`FolderBusyError` naming the holder's pid when another process holds it, and
    :class:`~l2s.errors.L2SError` when the folder cannot be created or written. Nested calls of
    one process on the same folder share the lock. ``kind`` (a key of :data:`OUTPUT_KINDS`):
    the folder is marked as holding that kind of output, and one marked with another is refused.
    A block that fails before writing anything removes the folders this call created.
    """
    created = _missing_folders(Path(folder))
    folder = prepare_output_dir(folder, label)
    key = folder.resolve()
    if key in _HELD:
        if kind is not None:
            claim_kind(folder, kind)
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    lock_was_there = (folder / LOCK_FILE).exists()
    fd = _acquire(folder, label)
    _HELD[key] = [fd, 1]
    try:
        if kind is not None:
            claim_kind(folder, kind)
        yield folder
    except BaseException as error:
        if created and _remove_if_unused(created, kind):
            if isinstance(error, KeyboardInterrupt) and not hasattr(error, "l2s_message"):
                error.l2s_message = (f"l2s: interrupted before anything was saved in {folder}; "
                                     "rerun the command to start")
        elif not created and not lock_was_there and not (folder / KIND_FILE).exists():
            (folder / LOCK_FILE).unlink(missing_ok=True)   # a user's folder refused: leave it as it was
        raise
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)  # the pid of a holder that is gone would only mislead
        os.close(fd)  # closing drops the flock


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_unused(created: list[Path], kind: str | None) -> bool:
    """Folders a failed run created, when the deepest holds nothing but the lock and marker:
    a failed command leaves no trace. True when removed; never raises (the run's own error is
    the one to see)."""
    folder = created[0]
    try:
        if any(entry.name not in (LOCK_FILE, KIND_FILE) for entry in folder.iterdir()):
            return False
        (folder / LOCK_FILE).unlink(missing_ok=True)
        try:
            folder.joinpath(KIND_FILE).unlink(missing_ok=True)
            folder.rmdir()
        except OSError:     # something appeared meanwhile: it stays, marked as before
            if kind is not None:
                atomic_write_text(folder / KIND_FILE, kind + "\n")
            return False
        for parent in created[1:]:
            parent.rmdir()  # stops (OSError) at the first that holds something
    except OSError:
        pass
    return not folder.exists()


def claim_kind(folder: Path, kind: str) -> None:
    """Mark ``folder`` as holding ``kind`` output, or refuse it when it is marked with another or
    holds files l2s did not mark: a command never writes over (or clears) what it did not make.
    A folder with nothing but l2s's lock and marker (a run that failed before writing) is marked anew;
    hidden files (``.DS_Store``) do not count."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(OUTPUT_KINDS)}")
    try:
        marked = (folder / KIND_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        marked = None
    except (OSError, UnicodeDecodeError):
        marked = ""
    if marked == kind:
        return
    held = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    if not held:
        atomic_write_text(folder / KIND_FILE, kind + "\n")
        return
    if marked in OUTPUT_KINDS:
        raise L2SError(f"{folder} holds {OUTPUT_KINDS[marked]}; this run writes {OUTPUT_KINDS[kind]}: "
                       "use another --out")
    if marked is not None:
        raise DamagedFileError(f"{folder / KIND_FILE} names no kind of output l2s knows ({marked!r}); delete it "
                               "if the folder holds this command's output, or use another --out")
    shown = first_names(held, 3)
    raise L2SError(f"{folder} holds files l2s did not write ({shown}): use an empty or new --out (an l2s run "
                   f"from before output folders were marked is adopted by: echo {kind} > "
                   f"{shlex.quote(str(folder / KIND_FILE))})")


def first_names(names: Sequence[str], most: int) -> str:
    """``a, b, c and 4 more``: at most ``most`` names (all of them when one more would be left)."""
    if len(names) <= most + 1:
        return ", ".join(names)
    return ", ".join(names[:most]) + f" and {len(names) - most} more"


REMOVED_LINE = "{why}: removed {names} from {folder}"


def remove_outputs(folder: str | Path, names: Sequence[str], why: str, *, line: str = REMOVED_LINE) -> list[str]:
    """Remove the files and folders ``names`` from ``folder``, saying in one warning line which
    were there: a fresh start never removes an earlier run's files unannounced. ``line``: that line,
    with ``{why}``, ``{names}`` and ``{folder}`` (a run that replaces its own earlier outputs says so)."""
    folder = Path(folder)
    present = [name + "/" if (folder / name).is_dir() else name for name in names if (folder / name).exists()]
    for name in present:
        path = folder / name.rstrip("/")
        if name.endswith("/"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if present:
        log.warning("%s", line.format(why=why, names=first_names(present, 10), folder=folder))
    return present


def _acquire(folder: Path, label: str) -> int:
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise L2SError(f"cannot write to the {label} {folder}: {error.strerror or error}") from None
    if fcntl is None:  # pragma: no cover - not POSIX
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].strip() or "unknown"
        os.close(fd)
        raise FolderBusyError(f"{folder} is being written by another l2s process (pid {holder}); wait for it "
                              f"to finish, or use another {label}") from None
    if not _same_file(fd, path):   # a failed run removed the folder meanwhile: its lock is no lock
        os.close(fd)
        raise FolderBusyError(f"{folder} was removed by another l2s process while this one opened it; run the "
                              "command again")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
