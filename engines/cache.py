"""On-disk cache of exported graphs and built engines, keyed by everything that changes them.

A key hashes the model class and config, a fingerprint of the weights, the attention processors
(an export bakes them in), the static input signature, the options of the build and the versions
of the tools. Changing any of these gives a new key, so a stale engine is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .base import InputSignature

# Bump when the layout of a cache entry or the meaning of its files changes (it changes every key,
# so every cached export and plan is built again).
CACHE_FORMAT = 1
# Elements sampled per tensor for the fingerprint; with the float64 sums this catches any
# fine-tune or LoRA fusion while reading each tensor once (cheap even for 12B parameters on GPU).
FINGERPRINT_SAMPLES = 64


def default_cache_dir() -> Path:
    """``$L2S_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/l2s/engines`` (``~/.cache/l2s/engines``)."""
    if os.environ.get("L2S_ENGINE_CACHE"):
        return Path(os.environ["L2S_ENGINE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "l2s" / "engines"


def check_cache_path(cache_dir: str | Path | None) -> None:
    """Refuse a cache folder that cannot exist (a file in its place or its path), without writing."""
    from .base import EngineError

    where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "it is a file" if existing == where else f"{existing} is a file"
        raise EngineError(f"the engine cache {_named(cache_dir, where)} cannot be used ({what}): {_advice(cache_dir)}")


def usable_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` (default :func:`default_cache_dir`), made if missing and checked writable,
    so an unusable one is refused before an export is paid for."""
    from .base import EngineError

    check_cache_path(cache_dir)
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    probe = where / f".write-check-{socket.gethostname()}-{os.getpid()}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")   # os.access says yes to root on read-only folders
        probe.unlink()
    except OSError as error:
        raise EngineError(f"the engine cache {_named(cache_dir, where)} cannot be used "
                          f"({error.strerror or error}): {_advice(cache_dir)}") from None
    return where


def _named(cache_dir: str | Path | None, where: Path) -> str:
    return f"L2S_ENGINE_CACHE={where}" if cache_dir is None and os.environ.get("L2S_ENGINE_CACHE") else str(where)


def _advice(cache_dir: str | Path | None) -> str:
    return "pass a writable cache_dir" if cache_dir is not None else "set L2S_ENGINE_CACHE to a writable folder"


@torch.no_grad()
def weight_fingerprint(module: torch.nn.Module) -> str:
    """A hash of the state dict: names, shapes, dtypes, a float64 sum and a strided sample per tensor.

    The statistics are computed on the tensors' own device and fetched in one transfer.
    """
    digest = hashlib.sha256()
    statistics: list[torch.Tensor] = []
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{list(tensor.shape)}|{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::step][:FINGERPRINT_SAMPLES].to(torch.float64)
        total = flat.sum(dtype=torch.float64).reshape(1) if flat.is_floating_point() else flat.double().sum().reshape(1)
        statistics.append(torch.cat([total, sample]))
    if statistics:
        # One transfer per device, in state-dict order (the same bytes as one transfer per tensor).
        same_device = len({t.device for t in statistics}) == 1
        host = torch.cat(statistics).cpu() if same_device else torch.cat([t.cpu() for t in statistics])
        digest.update(host.numpy().tobytes())
    return digest.hexdigest()


def attention_processor_names(module: torch.nn.Module) -> list[str]:
    """Sorted distinct class paths of the module's attention processors (empty if it has none)."""
    processors = getattr(module, "attn_processors", None)
    if not processors:
        return []
    return sorted({f"{type(p).__module__}.{type(p).__qualname__}" for p in processors.values()})


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` ("absent" for those not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _jsonable_config(module: torch.nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return None
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def model_cache_key(
    module: torch.nn.Module,
    signature: InputSignature,
    options: Mapping[str, Any],
    tools: tuple[str, ...] = ("torch", "diffusers", "onnx", "onnxscript"),
) -> str:
    """The cache key of an artefact built from ``module`` for ``signature`` with ``options``."""
    description = {
        "format": CACHE_FORMAT,
        "model": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": _jsonable_config(module),
        "weights": weight_fingerprint(module),
        "attention_processors": attention_processor_names(module),
        "inputs": signature.describe(),
        "options": dict(options),
        "versions": package_versions(*tools),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def derived_key(parent_key: str, options: Mapping[str, Any]) -> str:
    """Key of an artefact built from another cached one (e.g. a TensorRT plan from an ONNX export)."""
    text = json.dumps({"parent": parent_key, "options": dict(options)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@contextmanager
def staged_entry(final_dir: Path, required: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh scratch directory that becomes ``final_dir`` only if the block succeeds.

    A crash mid-export leaves no half-written entry behind, and two processes racing for the same
    key both end with a complete entry. An existing entry that is not complete (no readable
    meta.json, or a ``required`` file missing) is replaced; a complete one (a lost race) is kept.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(final_dir.parent)
    scratch = final_dir.parent / f".partial-{final_dir.name}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        yield scratch
        if final_dir.is_dir() and not entry_complete(final_dir, required):
            _discard(final_dir)
        try:
            os.replace(scratch, final_dir)
        except OSError:
            if not entry_complete(final_dir, required):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def entry_complete(entry_dir: Path, required: tuple[str, ...] = ()) -> bool:
    """Whether a cache entry has its meta.json (naming its key), every ``required`` file, and every
    file meta.json lists at its recorded size (a truncated copy or a lost data file is not
    complete; entries written before sizes were listed are checked for their files alone)."""
    meta = read_meta(entry_dir)
    if meta is None or "key" not in meta or not all((entry_dir / name).is_file() for name in required):
        return False
    files = meta.get("files", {})
    return isinstance(files, dict) and all(_size(entry_dir / name) == size for name, size in files.items())


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _host() -> str:
    return socket.gethostname().replace("-", "_")


def _sweep_leftovers(root: Path) -> None:
    """Scratch folders name their maker, so a build removes those whose process died (killed
    mid-export) without touching a live build on this or another machine sharing the cache."""
    for path in root.glob(".partial-*"):
        parts = path.name.rsplit("-", 3)    # .partial-<entry>-<host>-<pid>-<hex>
        if len(parts) == 4 and parts[1] == _host() and parts[2].isdigit() and not _alive(int(parts[2])):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)       # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _discard(entry_dir: Path) -> None:
    # Renamed first, so a racing process never sees (or deletes) half of it.
    aside = entry_dir.parent / f".stale-{entry_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(entry_dir, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def write_meta(entry_dir: Path, meta: Mapping[str, Any]) -> None:
    """Write meta.json, listing the entry's other files with their sizes (written last: the entry's
    files are all there when this is called)."""
    files = {p.name: p.stat().st_size for p in sorted(entry_dir.iterdir()) if p.is_file() and p.name != "meta.json"}
    (entry_dir / "meta.json").write_text(json.dumps({**meta, "files": files}, indent=2, sort_keys=True, default=str))


def read_meta(entry_dir: Path) -> dict[str, Any] | None:
    """The entry's meta.json, or None when the entry is absent or it is unreadable or no object."""
    path = entry_dir / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None
