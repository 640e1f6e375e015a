"""Output folders that nothing is lost in: one writer at a time, atomic writes, checksums, and
state files that fail with a line saying how to recover.

:func:`output_lock` takes an advisory exclusive lock (``flock``) on ``FOLDER/.l2s.lock`` and
writes the holder's pid into it; a second writer is refused at once. The kernel drops the lock
when its holder dies, even by SIGKILL, so a stale lock file never blocks a resumed run. POSIX
only: where ``fcntl`` is missing the lock is not taken.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from l2s.errors import L2SError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)
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


class DamagedFileError(L2SError):
    """A state file cannot be read back; the message names it and says how to recover."""


def prepare_output_dir(folder: str | Path, label: str = "output folder") -> Path:
    """Create ``folder`` (and parents) or say in one line why it cannot be an output folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise L2SError(f"{label} {folder} is a file, not a folder")
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


def remove_outputs(folder: str | Path, names: Sequence[str], why: str) -> list[str]:
    """Remove the files and folders ``names`` from ``folder``, saying in one warning line which
    were there: a fresh start never removes an earlier run's files unannounced."""
    folder = Path(folder)
    present = [name + "/" if (folder / name).is_dir() else name for name in names if (folder / name).exists()]
    for name in present:
        path = folder / name.rstrip("/")
        if name.endswith("/"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if present:
        log.warning("%s: removed %s from %s", why, first_names(present, 6), folder)
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


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader, or a run killed midway, never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON (and a final newline)."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` of ``obj`` written as :func:`atomic_write_bytes`: whole or not at all."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def fsync_append(path: str | Path, lines: list[str]) -> None:
    """Append ``lines`` in one write and sync them: a kill leaves whole lines or a torn last line,
    which the next append drops first (readers skip it; text after it would make it a damaged line)."""
    if not lines:
        return
    _drop_torn_tail(Path(path))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut ``path`` back to its last newline when it does not end with one."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if not size or (handle.seek(size - 1), handle.read(1))[1] == b"\n":
                return
            start = max(0, size - (1 << 20))
            while True:      # search backwards, a block at a time, for the last newline
                handle.seek(start)
                cut = handle.read(size - start).rfind(b"\n")
                if cut >= 0 or start == 0:
                    break
                start = max(0, start - (1 << 20))
            keep = start + cut + 1 if cut >= 0 else 0
            handle.seek(keep)
            if _is_json_object(handle.read()):   # a whole record that only lost its newline: readers keep it
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                handle.truncate(keep)
    except FileNotFoundError:
        return


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CONTENT_DIGEST_LIMIT = 64 << 20   # larger files (weight shards of GBs) count by size and mtime


def weights_digest(path: str | Path) -> str | None:
    """A short fingerprint of a weights file or folder: a retrained adapter or classifier saved at
    the same path gets another one. Files up to 64 MiB count by content (a copy keeps its
    fingerprint), larger ones by size and modification time (hashing GBs would cost minutes).
    None when ``path`` is not a local file or folder (a hub id)."""
    root = Path(path)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(   # hidden files (a lock's pid) are not weights
        f for f in root.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts))
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == root else file.relative_to(root).as_posix()
        if stat.st_size <= CONTENT_DIGEST_LIMIT:
            identity = file_sha256(file)
        else:
            identity = f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"{name}\0{identity}\0".encode())
    return digest.hexdigest()[:16]


def changed_settings(saved: dict, current: dict) -> list[str]:
    """The keys whose values differ between a saved run's settings and this run's (JSON-compared:
    a tuple equals the list it was saved as), for a refusal that names them."""
    current = json.loads(json.dumps(current))
    return sorted(k for k in {**saved, **current} if saved.get(k) != current.get(k))


def described_changes(saved: dict, current: dict, keys: Sequence[str], unrecorded: dict | None = None) -> str:
    """``key: old -> new`` per differing setting, ``key.sub: old -> new`` inside a mapping (long
    values by name alone); ``unrecorded``: what a run saved without a key ran with."""
    current, unrecorded = json.loads(json.dumps(current)), unrecorded or {}
    parts = []
    for key in keys:
        old, new = saved.get(key, unrecorded.get(key, _ABSENT)), current.get(key, unrecorded.get(key, _ABSENT))
        if isinstance(old, dict) and isinstance(new, dict):
            parts += [_change(f"{key}.{sub}", old.get(sub, _ABSENT), new.get(sub, _ABSENT))
                      for sub in sorted(set(old) | set(new)) if old.get(sub, _ABSENT) != new.get(sub, _ABSENT)]
        else:
            parts.append(_change(key, old, new))
    return ", ".join(parts)


_ABSENT = object()   # a setting a record does not hold (None is a value: "not set")


def _change(name: str, old, new) -> str:
    shown = lambda value: "(absent)" if value is _ABSENT else repr(value)  # noqa: E731
    part = f"{name}: {shown(old)} -> {shown(new)}"
    if len(part) <= 80:
        return part
    if isinstance(old, list) and isinstance(new, list) and len(old) != len(new):
        return f"{name}: {len(old)} entries -> {len(new)} entries"   # e.g. a classifier's layers
    return name


def unrecorded_digests(earlier: dict, settings: dict) -> dict:
    """``settings`` without the ``*_digest`` keys ``earlier`` lacks: a run recorded before weights
    were fingerprinted still resumes (only a recorded fingerprint that differs refuses)."""
    return {k: v for k, v in settings.items() if not (k.endswith("_digest") and k not in earlier)}


# ----------------------------------------------------------------------------------------------
# Reading state back
# ----------------------------------------------------------------------------------------------

def read_state_json(path: str | Path, fix: str) -> Any | None:
    """The parsed JSON file, None when it does not exist; :class:`DamagedFileError` (ending with
    ``fix``, how to recover) when it exists but cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{path} is damaged ({_reason(error)}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise DamagedFileError(f"{path} is damaged ({_reason(error)}); {fix}") from None


def read_jsonl_lines(path: str | Path, fix: str, torn_tail_ok: bool = True) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every line of a JSON-lines file ([] when it does not exist).

    A line that is not a JSON object is a :class:`DamagedFileError` naming the file and line
    (ending with ``fix``), never a silent stop. ``torn_tail_ok``: a last line without its newline
    that does not parse is what a writer killed mid-append leaves; it is left out instead.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise DamagedFileError(f"{path} cannot be read ({_reason(error)}); {fix}") from None
    lines = data.split(b"\n")
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            if torn_tail_ok and number == len(lines):  # no newline after it: a torn append
                break
            raise DamagedFileError(f"{path} line {number} is damaged ({_reason(error)}); {fix}") from None
        if not isinstance(row, dict):
            raise DamagedFileError(f"{path} line {number} is not a JSON object; {fix}")
        rows.append((number, row))
    return rows


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = [
    "DamagedFileError",
    "FolderBusyError",
    "KIND_FILE",
    "LOCK_FILE",
    "OUTPUT_KINDS",
    "changed_settings",
    "claim_kind",
    "described_changes",
    "remove_outputs",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "fsync_append",
    "output_lock",
    "prepare_output_dir",
    "read_jsonl_lines",
    "read_state_json",
    "unrecorded_digests",
    "weights_digest",
]
