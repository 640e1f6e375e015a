"""Benchmark: one plain step of a tiny FLUX transformer on CPU, eager vs torch.compile vs onnxruntime.

Run with ``python -m pytest bench/test_bench_engines.py`` (pytest-benchmark). The first run
compiles with inductor (~30 s cold on 2 cores; cached afterwards); set
``L2S_BENCH_COMPILE_BACKEND=aot_eager`` for a quick run. Each engine is also checked against eager,
so a fast wrong engine fails instead of winning. Threads: ``L2S_BENCH_THREADS`` for both torch
and onnxruntime, default 1: a model this small gains nothing from more, and on a busy machine two
OpenMP threads spin-wait on each other (a 5 ms forward took 1.5 s next to a training job).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never download

import pytest  # noqa: E402
import torch  # noqa: E402

from l2s.engines import (  # noqa: E402
    OnnxRuntimeEngine,
    example_flux_inputs,
    export_transformer_onnx,
    make_plain_step_engine,
)
from l2s.demo import tiny_flux_pipeline  # noqa: E402

THREADS = int(os.environ.get("L2S_BENCH_THREADS", "1"))
COMPILE_BACKEND = os.environ.get("L2S_BENCH_COMPILE_BACKEND", "inductor")
GROUP = "plain step, tiny FLUX (2+2 blocks, 64 image + 16 text tokens), CPU"


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    model = tiny_flux_pipeline(num_layers=2, num_single_layers=2, guidance_embeds=True).transformer
    inputs = example_flux_inputs(model, latent_grid=(8, 8), text_tokens=16)
    with torch.no_grad():
        reference = model(**inputs, return_dict=False)[0]
    return model, inputs, reference


def run_and_check(benchmark, engine, inputs, reference, rtol=1e-4, atol=1e-5):
    benchmark.group = GROUP
    benchmark.extra_info["engine"] = engine.name
    sample = benchmark(lambda: engine(**inputs))
    torch.testing.assert_close(sample, reference, rtol=rtol, atol=atol)


def test_eager(benchmark, model_and_inputs):
    model, inputs, reference = model_and_inputs
    run_and_check(benchmark, make_plain_step_engine(model, inputs, kind="eager"), inputs, reference, 0, 0)


def test_compiled(benchmark, model_and_inputs):
    model, inputs, reference = model_and_inputs
    engine = make_plain_step_engine(model, inputs, kind="compile", compile_backend=COMPILE_BACKEND)
    run_and_check(benchmark, engine, inputs, reference)


def test_onnxruntime(benchmark, model_and_inputs, tmp_path_factory):
    # Skipped here only: the eager and compiled benchmarks need no onnxruntime.
    pytest.importorskip("onnxruntime", reason="the onnxruntime benchmark needs the 'onnx' extra")
    model, inputs, reference = model_and_inputs
    export = export_transformer_onnx(model, inputs, tmp_path_factory.mktemp("onnx"))
    run_and_check(benchmark, OnnxRuntimeEngine(export, threads=THREADS), inputs, reference)
