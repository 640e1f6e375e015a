"""Writes that a reader, or a run killed midway, never sees half done: whole files replaced
atomically, and JSON-lines appends whose torn last line the next append drops."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

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
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:   # a full disk, or Ctrl-C / SIGTERM mid-write, leaves no stray half file behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _naming(error, path, tmp) if isinstance(error, OSError) else error
    _fsync_dir(path.parent)


def _naming(error: OSError, path: Path, *aliases: Path) -> OSError:
    """``error`` naming ``path``: a failed ``write`` (a full disk, an I/O error) names no file, and a
    failed open names the temporary one (``aliases``); the line a user reads names the file meant."""
    if error.filename is None or str(error.filename) in map(str, aliases):
        error.filename, error.filename2 = str(path), None
    return error


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


def process_umask() -> int:
    """The umask of this process, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, pattern: str = "*.safetensors") -> None:
    """Give ``path`` (for a folder: every file under it matching ``pattern``) that is 0600 the mode a
    plain ``open`` would: safetensors' ``save_file`` (and so diffusers' and peft's ``save_pretrained``)
    makes them 0600. Other modes were chosen by someone: left alone, as are files not ours to change."""
    path = Path(path)
    mode = 0o666 & ~process_umask()
    for file in (path.rglob(pattern) if path.is_dir() else [path]):
        try:
            if file.is_file() and not file.is_symlink() and file.stat().st_mode & 0o777 == 0o600:
                os.chmod(file, mode)
        except PermissionError:
            continue


def fsync_append(path: str | Path, lines: list[str]) -> None:
    """Append ``lines`` in one write and sync them: a kill leaves whole lines or a torn last line,
    which the next append drops first (readers skip it; text after it would make it a damaged line)."""
    if not lines:
        return
    _drop_torn_tail(Path(path))
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise _naming(error, Path(path))


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
