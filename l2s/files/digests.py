"""Fingerprints of weights and the settings a run records: what makes a resumed run the same run."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CONTENT_DIGEST_LIMIT = 64 << 20   # larger files (weight shards of GBs) count by size and mtime


def weights_digest(path: str | Path, leave_out: Collection[str] = ()) -> str | None:
    """A short fingerprint of a weights file or folder: a retrained adapter or classifier saved at
    the same path gets another one. Files up to 64 MiB count by content (a copy keeps its
    fingerprint), larger ones by size and modification time (hashing GBs would cost minutes).
    ``leave_out``: a folder's files (relative paths) that are no weights. None when ``path`` is not
    a local file or folder (a hub id)."""
    root = Path(path)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(   # hidden files (a lock's pid) are not weights
        f for f in root.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)
        and f.relative_to(root).as_posix() not in leave_out)
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
    # None is an option left out: "unset" says the run took its default (whatever that resolved to).
    shown = lambda value: "(absent)" if value is _ABSENT else "unset" if value is None else repr(value)  # noqa: E731
    part = f"{name}: {shown(old)} -> {shown(new)}"
    if len(part) <= 80:
        return part
    if isinstance(old, list) and isinstance(new, list) and len(old) != len(new):
        return f"{name}: {len(old)} entries -> {len(new)} entries"   # e.g. a classifier's layers
    return name


def unrecorded_digests(earlier: dict, settings: dict) -> dict:
    """``settings`` without the ``*_digest`` keys ``earlier`` lacks: a run recorded before weights
    were fingerprinted still resumes (only a recorded fingerprint that differs refuses)."""
    return unrecorded_later(earlier, settings, [k for k in settings if k.endswith("_digest")])


def unrecorded_later(earlier: dict, settings: dict, later: Collection[str]) -> dict:
    """``settings`` without the keys of ``later`` (recorded since a release) that ``earlier`` lacks:
    what was made before one was recorded resumes as it was made."""
    return {k: v for k, v in settings.items() if k in earlier or k not in later}
