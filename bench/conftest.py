"""Shared setup of the benchmark suite: offline Hugging Face, fixed thread count, seeded RNGs.

Benchmarks compare times across runs, so the thread count is fixed (``L2S_BENCH_THREADS``,
default 1: on a shared 2-core machine one thread gives far steadier numbers than two).
This directory is also put on ``sys.path`` by pytest, so tests here can import
``gpu_flux_dev`` (the GPU script) for the helpers it shares with the CPU suite.
"""
from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers / diffusers: benchmarks never download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

BENCH_THREADS = int(os.environ.get("L2S_BENCH_THREADS", "1"))
torch.set_num_threads(BENCH_THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Same marker semantics as tests/conftest.py (which does not apply to this directory).
    run_slow = os.environ.get("L2S_RUN_SLOW") == "1" or bool(config.getoption("--runslow", default=False))
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow benchmark: run with L2S_RUN_SLOW=1"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False"))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every benchmark starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
