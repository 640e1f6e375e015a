"""Plain-step engines: ONNX export verified with onnxruntime, the cache, engine choice, compile, TensorRT."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from l2s.engines import (
    EngineError,
    InputSignature,
    OnnxRuntimeEngine,
    PlainStepEngine,
    example_flux_inputs,
    export_transformer_onnx,
    make_plain_step_engine,
    model_cache_key,
    require_tensorrt,
    tensorrt_import_error,
    weight_fingerprint,
)
from l2s.engines import factory
from l2s.demo import tiny_flux_pipeline

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the 'engines' extra (onnx)")
pytest.importorskip("onnxruntime", reason="the ONNX tests need the 'engines' extra (onnxruntime)")

TENSORRT_SKIP_REASON = "TensorRT is not importable here (NVIDIA's tensorrt wheel and a CUDA GPU are needed)"


def eager_sample(transformer: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    # Dev-like (guidance embedded) so the guidance tensor is an exported input too.
    return tiny_flux_pipeline(num_layers=1, num_single_layers=1, guidance_embeds=True).transformer


@pytest.fixture(scope="module")
def inputs(transformer) -> dict:
    return example_flux_inputs(transformer, latent_grid=(4, 4), text_tokens=8, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def exported(transformer, inputs, cache_dir):
    return export_transformer_onnx(transformer, inputs, cache_dir)


def test_onnx_export_runs_in_onnxruntime_like_pytorch(exported, transformer, inputs):
    model = onnx.load(str(exported.path), load_external_data=False)
    assert [i.name for i in model.graph.input] == list(inputs)
    assert "guidance" in [i.name for i in model.graph.input]
    assert [o.name for o in model.graph.output] == ["sample"]
    external = {
        entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"
    }
    assert external == {"model.onnx.data"}, "all weights should live in one external data file"
    assert not exported.reused and exported.exporter in ("dynamo", "legacy")

    engine = OnnxRuntimeEngine(exported)
    for seed, guidance in ((0, 3.5), (1, 7.0)):  # other values through the same graph
        fresh = example_flux_inputs(transformer, seed=seed)
        fresh["guidance"] = torch.full_like(fresh["guidance"], guidance)
        torch.testing.assert_close(engine(**fresh), eager_sample(transformer, fresh), rtol=1e-4, atol=1e-4)
    # guidance is a live input, not a constant folded at export time
    other = dict(inputs, guidance=torch.full_like(inputs["guidance"], 1.0))
    assert not torch.allclose(engine(**other), engine(**inputs), atol=1e-4)


def test_cached_export_is_reused_without_exporting(exported, transformer, inputs, cache_dir, monkeypatch):
    mtime = exported.path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = export_transformer_onnx(transformer, inputs, cache_dir)
    assert again.reused and again.path == exported.path and again.key == exported.key
    assert again.path.stat().st_mtime_ns == mtime


def test_cache_key_tracks_weights_shapes_dtypes_and_options(transformer, inputs):
    signature = InputSignature.from_inputs(inputs)
    options = {"artefact": "onnx", "opset": 19}
    base = model_cache_key(transformer, signature, options)
    assert model_cache_key(copy.deepcopy(transformer), signature, options) == base  # deterministic

    changed = copy.deepcopy(transformer)
    with torch.no_grad():
        changed.proj_out.bias[0] += 1e-3
    assert weight_fingerprint(changed) != weight_fingerprint(transformer)
    other_shape = InputSignature.from_inputs(example_flux_inputs(transformer, latent_grid=(2, 4)))
    other_dtype = InputSignature.from_inputs({**inputs, "hidden_states": inputs["hidden_states"].double()})
    keys = {
        base,
        model_cache_key(changed, signature, options),
        model_cache_key(transformer, other_shape, options),
        model_cache_key(transformer, other_dtype, options),
        model_cache_key(transformer, signature, {**options, "opset": 20}),
    }
    assert len(keys) == 5


def test_failed_exports_raise_with_every_reason_and_leave_no_entry(transformer, inputs, tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(EngineError, match=r"dynamo: RuntimeError: exporter exploded.*legacy: RuntimeError"):
        export_transformer_onnx(transformer, inputs, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_export_keeps_bfloat16_types(tmp_path):
    model = tiny_flux_pipeline(num_layers=1, num_single_layers=1).transformer.to(torch.bfloat16)
    inputs = example_flux_inputs(model)
    assert "guidance" not in inputs  # schnell-like: no guidance input at all
    export = export_transformer_onnx(model, inputs, tmp_path)
    onnx.checker.check_model(str(export.path))  # path form: also checks the external data
    graph = onnx.load(str(export.path), load_external_data=False).graph
    bf16 = onnx.TensorProto.BFLOAT16
    assert {i.name: i.type.tensor_type.elem_type for i in graph.input} == {name: bf16 for name in inputs}
    assert graph.output[0].type.tensor_type.elem_type == bf16
    with pytest.raises(EngineError, match="bfloat16"):
        OnnxRuntimeEngine(export)


def test_auto_on_cpu_picks_eager_and_says_why(transformer, inputs):
    engine = make_plain_step_engine(transformer, inputs, kind="auto")
    assert isinstance(engine, PlainStepEngine)
    assert engine.kind == "eager" and engine.name == "eager"
    assert "cpu" in engine.reason and "TensorRT" in engine.reason
    torch.testing.assert_close(engine(**inputs, return_dict=False), eager_sample(transformer, inputs), rtol=0, atol=0)


def test_compile_engine_matches_eager(transformer):
    # aot_eager traces and partitions like inductor without its ~30 s cold C++ compile here;
    # the inductor variant is the slow test below.
    inputs = example_flux_inputs(transformer, seed=2)
    engine = make_plain_step_engine(transformer, inputs, kind="compile", compile_backend="aot_eager")
    assert engine.kind == "compile" and engine.name == "compile[aot_eager]"
    assert "matches eager" in engine.reason
    fresh = example_flux_inputs(transformer, seed=3)
    torch.testing.assert_close(engine(**fresh), eager_sample(transformer, fresh), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compile_engine_matches_eager():
    model = tiny_flux_pipeline(num_layers=1, num_single_layers=1).transformer
    inputs = example_flux_inputs(model)
    engine = make_plain_step_engine(model, inputs, kind="compile", compile_backend="inductor")
    assert engine.name == "compile[inductor]"
    fresh = example_flux_inputs(model, seed=1)
    torch.testing.assert_close(engine(**fresh), eager_sample(model, fresh), rtol=1e-4, atol=1e-5)


def test_onnxruntime_engine_is_verified_and_has_static_shapes(exported, transformer, inputs, cache_dir):
    engine = make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=cache_dir)
    assert engine.kind == "onnxruntime"
    assert "reused cached ONNX export" in engine.reason and "matches eager" in engine.reason
    with pytest.raises(EngineError, match="static shapes"):
        engine(**example_flux_inputs(transformer, latent_grid=(2, 4)))
    with pytest.raises(EngineError, match="joint_attention_kwargs"):
        engine(**inputs, joint_attention_kwargs={"scale": 0.5})


def test_verification_rejects_an_engine_that_disagrees_with_eager(exported, transformer, inputs, cache_dir):
    # onnxruntime differs from eager by ~1e-7 (reduction order): a zero tolerance must trip.
    with pytest.raises(EngineError, match="disagrees with eager"):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=cache_dir, tolerance=0.0)


def test_auto_reports_a_skipped_engine_instead_of_hiding_it(exported, transformer, inputs, cache_dir, monkeypatch):
    # Stand-in for a CUDA machine whose first choice fails verification: zero tolerance trips it.
    candidates = [("onnxruntime", "first choice", {}), ("eager", "fallback", {})]
    monkeypatch.setattr(factory, "_auto_candidates", lambda device: candidates)
    with pytest.warns(UserWarning, match="'onnxruntime' unavailable"):
        engine = make_plain_step_engine(transformer, inputs, cache_dir=cache_dir, tolerance=0.0)
    assert engine.kind == "eager"
    assert engine.reason.startswith("fallback; skipped onnxruntime (EngineError:")
    assert "disagrees with eager" in engine.reason


def test_auto_on_cuda_without_tensorrt_plans_compile_with_cuda_graphs(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    kinds = [kind for kind, _, _ in factory._auto_candidates(torch.device("cuda", 0))]
    assert kinds == ["compile-cuda-graph", "eager"]
    kind, reason, overrides = factory._auto_candidates(torch.device("cuda", 0))[0]
    assert "TensorRT is not importable" in reason
    assert overrides == {"compile_mode": "max-autotune-no-cudagraphs"}


def test_bad_requests_raise_clear_errors(transformer, inputs):
    with pytest.raises(EngineError, match="unknown engine kind"):
        make_plain_step_engine(transformer, inputs, kind="turbo")
    with pytest.raises(EngineError, match="unexpected transformer inputs"):
        make_plain_step_engine(transformer, {**inputs, "latents": inputs["hidden_states"]}, kind="eager")
    with pytest.raises(EngineError, match="needs the transformer on CUDA"):
        make_plain_step_engine(transformer, inputs, kind="cuda-graph")
    with pytest.raises(EngineError, match="needs the transformer on CUDA"):
        make_plain_step_engine(transformer, inputs, kind="tensorrt")


def test_missing_tensorrt_is_reported_not_hidden(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    assert "tensorrt" in tensorrt_import_error()
    with pytest.raises(EngineError, match="pip install tensorrt"):
        require_tensorrt()


class RecordingProcessor:
    """Stands in for l2s's attention-capture processor: not one of diffusers' own."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_frozen_engines_refuse_to_bake_in_custom_attention_processors(transformer, inputs, tmp_path):
    model = copy.deepcopy(transformer)
    model.set_attn_processor({name: RecordingProcessor(p) for name, p in model.attn_processors.items()})
    with pytest.raises(EngineError, match="RecordingProcessor"):
        make_plain_step_engine(model, inputs, kind="onnxruntime", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before exporting anything


@pytest.mark.gpu
def test_cuda_graph_engine_matches_eager():
    model = tiny_flux_pipeline(num_layers=1, num_single_layers=1).transformer.cuda()
    inputs = example_flux_inputs(model)
    engine = make_plain_step_engine(model, inputs, kind="cuda-graph")
    assert engine.name == "cuda-graph"
    fresh = example_flux_inputs(model, seed=1)
    torch.testing.assert_close(engine(**fresh), eager_sample(model, fresh), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_tensorrt_engine_matches_eager_and_reuses_its_plan(tmp_path):
    pytest.importorskip("tensorrt", reason=TENSORRT_SKIP_REASON)
    model = tiny_flux_pipeline(num_layers=1, num_single_layers=1, guidance_embeds=True).transformer
    model = model.to("cuda", torch.bfloat16)
    inputs = example_flux_inputs(model)
    engine = make_plain_step_engine(model, inputs, kind="auto", cache_dir=tmp_path)
    assert engine.kind == "tensorrt" and "TensorRT is importable" in engine.reason
    fresh = example_flux_inputs(model, seed=1)
    actual, expected = engine(**fresh), eager_sample(model, fresh)
    assert actual.dtype == torch.bfloat16 and actual.shape == expected.shape
    assert (actual.float() - expected.float()).norm() / expected.float().norm() < 5e-2
    again = make_plain_step_engine(model, inputs, kind="tensorrt", cache_dir=tmp_path)
    assert "reused cached plan" in again.reason and "reused cached ONNX export" in again.reason
