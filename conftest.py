"""Pytest setup shared by tests/ and bench/: offline Hugging Face, one thread, seeded RNGs, marker skips."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers / diffusers: tests never download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Engines cache exports on disk: keep the tests' exports out of the user's cache, in a folder
# removed when the session ends (each run used to leave one behind in the temp dir).
if "L2S_ENGINE_CACHE" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402

    _engine_cache = tempfile.mkdtemp(prefix="l2s-engine-cache-")
    os.environ["L2S_ENGINE_CACHE"] = _engine_cache
    atexit.register(shutil.rmtree, _engine_cache, ignore_errors=True)

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models gain nothing from a second thread, and on a machine other jobs share more
# threads slow them down (OpenMP threads spin for busy cores); L2S_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("L2S_TEST_THREADS", "1")))


pytest_plugins = ["tests.hub_cache"]   # the `hub_cache` fixture of the hub tests


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False,
        help="run tests marked slow (same as L2S_RUN_SLOW=1)",
    )


def _run_slow(config: pytest.Config) -> bool:
    return bool(config.getoption("--runslow")) or os.environ.get("L2S_RUN_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = None
    if not _run_slow(config):
        skip_slow = pytest.mark.skip(reason="slow test: run with --runslow or L2S_RUN_SLOW=1")
    skip_gpu = None
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(
            reason=f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})"
        )
    for item in items:
        if skip_slow is not None and "slow" in item.keywords:
            item.add_marker(skip_slow)
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def umask_022():
    """The test runs under umask 022 (a plain open makes files 0644), whatever the caller's; yields
    ``modes(folder)``: the permission bits of every file under ``folder``, by relative path."""
    from pathlib import Path

    def modes(folder) -> dict[str, int]:
        return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in Path(folder).rglob("*") if p.is_file()}

    previous = os.umask(0o022)
    try:
        yield modes
    finally:
        os.umask(previous)


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name)``: the next write of l2s's file writers (:mod:`l2s.files.atomic`) to a file named
    ``name`` (an atomic write's is ``NAME.tmp``) writes half its bytes and fails as a full disk does
    (ENOSPC), once; returns the list of the paths that failed."""
    import builtins
    import errno

    import l2s.files.atomic as atomic

    armed, failed = [], []

    class Full:
        def __init__(self, handle, path: str):
            self._handle, self._path = handle, path

        def write(self, data):
            self._handle.write(data[:len(data) // 2])
            self._handle.flush()
            armed.clear()
            failed.append(self._path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._handle.close()

    def opening(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if armed and os.path.basename(file) == armed[0] and set(mode) & set("wa"):
            return Full(handle, str(file))
        return handle

    monkeypatch.setattr(atomic, "open", opening, raising=False)

    def fail(name: str) -> list[str]:
        armed[:] = [name]
        return failed

    return fail
