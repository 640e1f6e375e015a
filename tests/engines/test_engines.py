"""Plain-step engines: ONNX export verified with onnxruntime, the cache, engine choice, compile, TensorRT."""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path

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
from l2s.engines import factory, torch_engines
from l2s.engines.cache import write_meta
from l2s.engines.tensorrt_engine import plan_cache_entry
from l2s.demo import tiny_flux_pipeline

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the 'onnx' extra (onnx)")
pytest.importorskip("onnxruntime", reason="the ONNX tests need the 'onnx' extra (onnxruntime)")

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


def test_auto_runs_eager_and_says_why(transformer, inputs, exported, cache_dir, caplog):
    # An ONNX export on disk is not what auto reuses: the reason must not say nothing is cached.
    with caplog.at_level("INFO", logger="l2s.engines"):
        engine = make_plain_step_engine(transformer, inputs, kind="auto", cache_dir=cache_dir)
    assert isinstance(engine, PlainStepEngine)
    assert engine.kind == "eager" and engine.name == "eager"
    assert "no TensorRT plan (the one engine auto reuses) is cached" in engine.reason and "ask for one" in engine.reason
    assert not caplog.records                           # nothing was built, so nothing announced
    torch.testing.assert_close(engine(**inputs, return_dict=False), eager_sample(transformer, inputs), rtol=0, atol=0)


def test_auto_never_builds_even_where_tensorrt_could(transformer, inputs, tmp_path, monkeypatch):
    # Stand-in for a CUDA machine with TensorRT: auto probes the cache and, finding nothing, stays eager.
    probes = []
    monkeypatch.setattr(factory, "cached_tensorrt_plan", lambda *args: probes.append(args) or None)
    monkeypatch.setattr(factory, "_build", lambda *a, **k: pytest.fail("auto must not build an engine"))
    engine = make_plain_step_engine(transformer, inputs, cache_dir=tmp_path)
    assert engine.kind == "eager" and len(probes) == 1 and probes[0][3] == tmp_path


def test_auto_reuses_a_cached_engine(transformer, inputs, exported, cache_dir, monkeypatch):
    # A plan on disk is what auto takes; onnxruntime (CPU) stands in for TensorRT's runner here.
    built = []
    original = factory._build

    def build(kind, *args, **kwargs):
        built.append(kind)
        return original("onnxruntime", *args, **kwargs)

    monkeypatch.setattr(factory, "cached_tensorrt_plan", lambda *args: exported.path)
    monkeypatch.setattr(factory, "_build", build)
    engine = make_plain_step_engine(transformer, inputs, cache_dir=cache_dir)
    assert built == ["tensorrt"] and engine.kind == "onnxruntime"
    assert f"cached at {exported.path}" in engine.reason and "matches eager" in engine.reason


def test_the_tensorrt_cache_probe_needs_cuda_and_a_cached_export(transformer, inputs, exported, cache_dir,
                                                                   monkeypatch, tmp_path):
    assert factory.cached_tensorrt_plan(transformer, inputs, torch.device("cpu"), cache_dir) is None
    monkeypatch.setattr(factory, "tensorrt_import_error", lambda: None)
    monkeypatch.setattr(factory, "plan_options", lambda level: {"artefact": "tensorrt", "gpu": "stand-in"})
    cuda = torch.device("cuda", 0)
    assert factory.cached_tensorrt_plan(transformer, inputs, cuda, tmp_path) is None    # no export there
    assert factory.cached_tensorrt_plan(transformer, inputs, cuda, cache_dir) is None   # export, no plan
    _, plan_dir = plan_cache_entry(exported.key, {"artefact": "tensorrt", "gpu": "stand-in"}, cache_dir)
    plan_dir.mkdir()
    (plan_dir / "engine.plan").write_bytes(b"plan")
    (plan_dir / "meta.json").write_text("{}")
    assert factory.cached_tensorrt_plan(transformer, inputs, cuda, cache_dir) is None   # meta lists no files
    write_meta(plan_dir, {"key": "stand-in"})
    assert factory.cached_tensorrt_plan(transformer, inputs, cuda, cache_dir) == plan_dir / "engine.plan"


def test_an_explicit_build_announces_its_cost_once(transformer, inputs, caplog):
    with caplog.at_level("WARNING", logger="l2s.engines"):
        make_plain_step_engine(transformer, inputs, kind="compile", compile_backend="aot_eager")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("building the compile plain-step engine for hidden_states[")
    assert "expected cost: a torch.compile" in lines[0] and "cached in" in lines[0]
    assert caplog.records[0].l2s_every_process   # every rank of a spread run builds its own: said once a machine


def test_an_engine_whose_export_is_cached_announces_no_build(exported, transformer, inputs, cache_dir, caplog):
    with caplog.at_level("WARNING", logger="l2s.engines"):
        engine = make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=cache_dir)
    assert not caplog.records and "reused cached ONNX export" in engine.reason


def test_compile_engine_matches_eager(transformer):
    # aot_eager traces and partitions like inductor without its ~30 s cold C++ compile here;
    # the inductor variant is the slow test below.
    inputs = example_flux_inputs(transformer, seed=2)
    engine = make_plain_step_engine(transformer, inputs, kind="compile", compile_backend="aot_eager")
    assert engine.kind == "compile" and engine.name == "compile[aot_eager]"
    assert "matches eager" in engine.reason
    fresh = example_flux_inputs(transformer, seed=3)
    torch.testing.assert_close(engine(**fresh), eager_sample(transformer, fresh), rtol=1e-5, atol=1e-6)


def test_compile_engine_asks_inductor_for_the_exp_tanh_on_the_cpu(transformer, monkeypatch):
    """Only inductor on a CPU model gets the option (a ``mode`` cannot be given beside options)."""
    asked = []
    monkeypatch.setattr(torch_engines.torch, "compile", lambda model, **options: asked.append(options) or model)
    torch_engines.CompiledEngine(transformer)
    torch_engines.CompiledEngine(transformer, mode="max-autotune")
    torch_engines.CompiledEngine(transformer, backend="aot_eager")
    assert [a.get("options") for a in asked] == [{"cpp.use_decompose_tanh": True}, None, None]
    assert asked[1]["mode"] == "max-autotune"
    monkeypatch.setattr(torch_engines, "_has_exp_tanh", lambda: False)     # a torch whose inductor lacks it
    torch_engines.CompiledEngine(transformer)
    assert "options" not in asked[-1]


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


def test_bad_requests_raise_clear_errors(transformer, inputs):
    with pytest.raises(EngineError, match="unknown engine kind"):
        make_plain_step_engine(transformer, inputs, kind="turbo")
    with pytest.raises(EngineError, match="unexpected transformer inputs"):
        make_plain_step_engine(transformer, {**inputs, "latents": inputs["hidden_states"]}, kind="eager")
    with pytest.raises(EngineError, match="needs the model on CUDA"):
        make_plain_step_engine(transformer, inputs, kind="cuda-graph")
    with pytest.raises(EngineError, match="needs the model on CUDA"):
        make_plain_step_engine(transformer, inputs, kind="tensorrt")


def test_what_cannot_be_built_here_is_refused_before_its_cost_is_announced(transformer, inputs, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="l2s"):
        for kind in ("cuda-graph", "compile-cuda-graph", "tensorrt"):
            with pytest.raises(EngineError, match="needs the model on CUDA"):
                make_plain_step_engine(transformer, inputs, kind=kind)
    assert not caplog.records                                  # no "building ... expected cost" line
    bf16 = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in inputs.items()}
    with pytest.raises(EngineError, match="onnxruntime takes no bfloat16"):
        make_plain_step_engine(copy.deepcopy(transformer).to(torch.bfloat16), bf16, kind="onnxruntime",
                               cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())                         # refused before the export
    with pytest.raises(EngineError, match="tolerance must be a number >= 0, got '1e-3'"):
        make_plain_step_engine(transformer, inputs, kind="compile", tolerance="1e-3")


def test_an_engine_is_checked_against_eager_as_it_was_before_the_build(transformer, inputs, monkeypatch):
    import l2s.engines.factory as factory
    from l2s.engines import EagerEngine

    class InPlace:      # not an EagerEngine: those are not checked
        name, reason = "in-place", "test"

        def __init__(self, model):
            self.run = EagerEngine(model)

        def __call__(self, **call):
            return self.run(**call)

    def build_in_place(kind, model, example, reason, **options):   # as a regional compile does: the model changes
        with torch.no_grad():
            model.proj_out.bias.add_(1.0)
        return InPlace(model)

    monkeypatch.setattr(factory, "_build", build_in_place)
    saved = transformer.proj_out.bias.detach().clone()   # restored bit for bit: later tests reuse its export
    try:
        with pytest.raises(EngineError, match="in-place disagrees with eager"):
            make_plain_step_engine(transformer, inputs, kind="compile")
    finally:
        with torch.no_grad():
            transformer.proj_out.bias.copy_(saved)


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
    assert make_plain_step_engine(model, inputs, kind="auto", cache_dir=tmp_path).kind == "eager"
    engine = make_plain_step_engine(model, inputs, kind="tensorrt", cache_dir=tmp_path)
    assert engine.kind == "tensorrt" and "requested explicitly" in engine.reason
    fresh = example_flux_inputs(model, seed=1)
    actual, expected = engine(**fresh), eager_sample(model, fresh)
    assert actual.dtype == torch.bfloat16 and actual.shape == expected.shape
    assert (actual.float() - expected.float()).norm() / expected.float().norm() < 5e-2
    again = make_plain_step_engine(model, inputs, kind="auto", cache_dir=tmp_path)    # found on disk
    assert again.kind == "tensorrt" and "is cached at" in again.reason
    assert "reused cached plan" in again.reason and "reused cached ONNX export" in again.reason


def test_a_damaged_cache_entry_is_replaced_and_a_complete_one_kept(tmp_path):
    from l2s.engines.cache import entry_complete, staged_entry, write_meta

    entry = tmp_path / "key"
    entry.mkdir()
    (entry / "junk").write_text("left by a crash")           # no meta.json: not an entry
    with staged_entry(entry, ("model.onnx",)) as scratch:
        (scratch / "model.onnx").write_text("new")
        write_meta(scratch, {"key": "key"})
    assert entry_complete(entry, ("model.onnx",)) and not (entry / "junk").exists()
    with staged_entry(entry, ("model.onnx",)) as scratch:   # a racing process finished first: keep it
        (scratch / "model.onnx").write_text("other")
        write_meta(scratch, {"key": "key"})
    assert (entry / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no scratch or stale folder left


@pytest.mark.parametrize("damage", ["truncated graph", "lost data file", "empty meta"])
def test_a_damaged_export_is_exported_again(transformer, inputs, tmp_path, damage):
    first = export_transformer_onnx(transformer, inputs, tmp_path)
    entry = first.directory
    if damage == "truncated graph":
        data = (entry / "model.onnx").read_bytes()
        (entry / "model.onnx").write_bytes(data[: len(data) // 2])
    elif damage == "lost data file":
        (entry / "model.onnx.data").unlink()
    else:
        (entry / "meta.json").write_text("{}")
    again = export_transformer_onnx(transformer, inputs, tmp_path)
    assert not again.reused and again.path == first.path
    torch.testing.assert_close(OnnxRuntimeEngine(again)(**inputs), eager_sample(transformer, inputs),
                               rtol=1e-4, atol=1e-4)


def test_a_cached_export_that_disagrees_with_eager_names_its_folder(transformer, inputs, tmp_path):
    entry = export_transformer_onnx(transformer, inputs, tmp_path).directory
    data = entry / "model.onnx.data"
    data.write_bytes(bytes(data.stat().st_size))      # zeroed weights, same size: the cache cannot tell
    with pytest.raises(EngineError, match=re.escape(f"read from the cache entry {entry}: delete that folder")):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=tmp_path)


def test_an_unusable_cache_folder_is_refused_before_any_export(transformer, inputs, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported into an unusable cache"))
    monkeypatch.setenv("L2S_ENGINE_CACHE", str(blocker))
    with pytest.raises(EngineError, match=rf"the engine cache L2S_ENGINE_CACHE={blocker} cannot be used"):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime")
    with pytest.raises(EngineError, match=rf"the engine cache {blocker}/sub cannot be used \({blocker} is a file\): "
                                          "pass a writable cache_dir"):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=blocker / "sub")


def test_a_read_only_cache_that_holds_the_export_is_used(transformer, inputs, exported, cache_dir, monkeypatch):
    monkeypatch.setattr(factory, "usable_cache_dir", lambda where: pytest.fail("probed a cache it only reads"))
    engine = make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=cache_dir)
    assert "reused cached ONNX export" in engine.reason


def test_requests_that_cannot_work_are_refused_without_a_model():
    from l2s.engines import check_engine_request

    check_engine_request("compile", "cpu")
    with pytest.raises(EngineError, match="unknown engine kind 'turbo'"):
        check_engine_request("turbo", "cpu")
    with pytest.raises(EngineError, match="the onnxruntime engine runs on CPU"):
        check_engine_request("onnxruntime", "cuda")
    with pytest.raises(EngineError, match="onnxruntime takes no bfloat16"):
        check_engine_request("onnxruntime", "cpu", torch.bfloat16)
    with pytest.raises(EngineError, match="unknown ONNX exporter 'fast'"):
        check_engine_request("onnxruntime", "cpu", exporter="fast")


def test_missing_onnx_packages_are_named_with_their_extra(transformer, inputs, exported, cache_dir, monkeypatch,
                                                          tmp_path):
    import importlib.util

    from l2s.engines import check_engine_request

    real = importlib.util.find_spec
    missing = {"onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(EngineError, match=r"^ONNX engines need onnxruntime, not installed here: "
                                          r"pip install 'l2s\[onnx\]'$"):
        check_engine_request("onnxruntime", "cpu")
    # The exporter's packages are needed only when there is something to export.
    missing = {"onnx", "onnxscript"}
    with pytest.raises(EngineError, match=r"^ONNX engines need onnx, onnxscript, not installed here"):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=tmp_path)
    with pytest.raises(EngineError, match=r"^ONNX engines need onnx, not installed here"):
        make_plain_step_engine(transformer, inputs, kind="onnxruntime", cache_dir=tmp_path, exporter="legacy")
    assert "reused cached ONNX export" in make_plain_step_engine(transformer, inputs, kind="onnxruntime",
                                                                 cache_dir=cache_dir).reason


def test_a_killed_build_leaves_no_folder_behind_once_another_build_runs(tmp_path):
    import socket
    import subprocess

    from l2s.engines.cache import staged_entry, write_meta

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftovers = {
        "killed": tmp_path / f".partial-onnx-k1-{host}-{dead}-0badc0de",
        "running here": tmp_path / f".partial-onnx-k2-{host}-{os.getpid()}-0badc0de",
        "another machine's": tmp_path / f".partial-onnx-k3-elsewhere-{dead}-0badc0de",
    }
    for folder in leftovers.values():
        folder.mkdir()
    with staged_entry(tmp_path / "onnx-k4", ("model.onnx",)) as scratch:
        (scratch / "model.onnx").write_text("graph")
        write_meta(scratch, {"key": "k4"})
    assert not leftovers["killed"].exists()
    assert leftovers["running here"].exists() and leftovers["another machine's"].exists()


def test_a_tensorrt_engine_that_disagrees_names_every_cached_folder_it_read():
    # its plan may have been rebuilt from a damaged cached export: deleting the plan alone fails again
    from types import SimpleNamespace

    from l2s.engines.factory import _cached_source_advice

    export = SimpleNamespace(reused=True, path=Path("/cache/onnx-1/model.onnx"))
    plan = SimpleNamespace(reused=True, path=Path("/cache/trt-2/model.plan"))
    assert _cached_source_advice(SimpleNamespace(export=export, plan=plan)) == (
        "; it was read from the cache entries /cache/onnx-1 and /cache/trt-2: delete those folders to build it again")
    fresh = SimpleNamespace(reused=False, path=plan.path)
    assert _cached_source_advice(SimpleNamespace(export=export, plan=fresh)).endswith(
        "cache entry /cache/onnx-1: delete that folder to build it again")
    assert _cached_source_advice(SimpleNamespace(plan=fresh)) == ""
