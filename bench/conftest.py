"""Benchmark-only setup; the shared setup (offline hub, seeded RNGs, marker skips) is ../conftest.py.

Benchmarks compare times across runs, so the thread count is fixed: ``L2S_BENCH_THREADS``
(default 1; on a shared 2-core machine one thread gives far steadier numbers than two).
pytest puts this directory on ``sys.path``, so benchmarks can import ``gpu_flux_dev``'s helpers.
"""
from __future__ import annotations

import os

import torch

BENCH_THREADS = int(os.environ.get("L2S_BENCH_THREADS", "1"))
torch.set_num_threads(BENCH_THREADS)
