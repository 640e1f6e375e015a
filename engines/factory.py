"""Choose, build and verify the engine that runs plain denoising steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from l2s.distributed import EVERY_PROCESS

from .base import (
    CUDA_ONLY_KINDS,
    ENGINE_KINDS,
    EngineError,
    InputSignature,
    PlainStepEngine,
    model_device,
    model_dtype,
    relative_error,
    tensor_inputs,
)
from .cache import (
    attention_processor_names,
    check_cache_path,
    default_cache_dir,
    entry_complete,
    usable_cache_dir,
)
from .onnx_export import (
    DEFAULT_OPSET,
    EXPORTERS,
    ONNX_FILE,
    Exporter,
    OnnxRuntimeEngine,
    export_packages,
    export_transformer_onnx,
    onnx_cache_entry,
    require_packages,
)
from .tensorrt_engine import (
    DEFAULT_OPTIMIZATION_LEVEL,
    TensorRTEngine,
    build_tensorrt_plan,
    cached_plan_path,
    plan_options,
    tensorrt_import_error,
)
from .torch_engines import CompiledEngine, CudaGraphEngine, EagerEngine

logger = logging.getLogger(__name__)

# Relative (norm-wise) error allowed against eager on the example inputs. Float32 engines differ
# from eager only in reduction order; half-precision ones also in rounding of fused ops.
DEFAULT_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# "compile-cuda-graph" compiles like this, then replays a CUDA graph (plain steps have static shapes).
CUDA_GRAPH_COMPILE_MODE = "max-autotune-no-cudagraphs"
AUTO_EAGER_REASON = ("no engine was asked for and no TensorRT plan (the one engine auto reuses) is cached for "
                     "these shapes here, so plain steps run eager; ask for one (compile, compile-cuda-graph, "
                     "cuda-graph, onnxruntime, tensorrt) to build it once")
# What a build costs, said before it starts (in words: the time depends on the model and machine).
BUILD_COSTS = {
    "compile": "a torch.compile of the {whole} {params}-parameter transformer (cold: the longest step of a "
               "first run on a large model; warm from the kernels cached in {compile_cache}: much less)",
    "compile-cuda-graph": "a torch.compile (max-autotune) of the {whole} {params}-parameter transformer "
                          "(cold, or warm from {compile_cache}), then one CUDA graph capture",
    "cuda-graph": "two warm-up forwards and one CUDA graph capture (a graph lives in this process only)",
    "onnxruntime": "an ONNX export of the {params}-parameter transformer, cached in {cache}",
    "tensorrt": "an ONNX export and a TensorRT build of the {params}-parameter transformer (the slowest "
                "engine to build) unless both are cached in {cache}",
}


def make_plain_step_engine(
    transformer: torch.nn.Module,
    example_inputs: Mapping[str, Any],
    kind: str = "auto",
    cache_dir: str | Path | None = None,
    *,
    compile_backend: str = "inductor",
    compile_mode: str | None = None,
    regional_compile: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    tensorrt_optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
) -> PlainStepEngine:
    """Build the engine for plain steps of ``transformer`` at the shapes of ``example_inputs``.

    ``example_inputs`` are the keywords of one ``transformer(...)`` call (tensor arguments; None,
    ``joint_attention_kwargs`` and ``return_dict`` are ignored). ``kind``:

    * ``"auto"``: eager, unless a TensorRT plan for this model and these shapes is already cached
      on disk (and TensorRT and CUDA are here): it never starts a build on its own.
    * ``"eager"``, ``"compile"`` (``compile_backend``/``compile_mode``/``regional_compile``),
      ``"compile-cuda-graph"`` (compiled, replayed as a CUDA graph), ``"cuda-graph"`` (eager
      forward captured once), ``"onnxruntime"`` (CPU, for verification), ``"tensorrt"``: exactly
      that engine, or :class:`EngineError`. A build first logs one line with its expected cost.

    Unless ``verify=False``, a non-eager engine is run once on the example inputs and compared with
    eager; a relative error above ``tolerance`` (default by dtype, see ``DEFAULT_TOLERANCE``) raises.
    This also moves compilation/capture out of the first denoising step. ``cache_dir`` holds
    ONNX exports and TensorRT plans (default :func:`~l2s.engines.cache.default_cache_dir`);
    compiled kernels go to torch's on-disk compile cache.

    The result's ``name`` says what runs, ``reason`` why it was chosen and how it was checked.
    """
    inputs, device = _checked_request(kind, transformer, example_inputs, tolerance)
    options = dict(
        compile_backend=compile_backend, compile_mode=compile_mode, regional_compile=regional_compile,
        cache_dir=cache_dir, opset=opset, exporter=exporter,
        tensorrt_optimization_level=tensorrt_optimization_level,
    )
    check = dict(verify=verify, tolerance=tolerance)
    if kind == "auto":
        return _cached_or_eager(transformer, inputs, device, options, check)
    cached = refuse_unbuildable(kind, transformer, inputs, cache_dir, exporter, opset, tensorrt_optimization_level)
    if not cached:
        announce_build(kind, transformer, inputs, cache_dir, regional_compile)
    # Eager's answer first: a regional compile changes the transformer's blocks in place.
    expected = EagerEngine(transformer)(**inputs) if verify and kind != "eager" else None
    engine = _build(kind, transformer, inputs, "requested explicitly", **options)
    return _verified(engine, transformer, inputs, expected=expected, **check)


def _checked_request(kind: str, transformer: torch.nn.Module, example_inputs: Mapping[str, Any],
                     tolerance: float | None) -> tuple[dict[str, torch.Tensor], torch.device]:
    """(the example's tensors, the transformer's device), or :class:`EngineError` for an unknown kind, no
    tensors, tensors on another device, or a tolerance that is not a number >= 0."""
    if kind not in ENGINE_KINDS:
        raise EngineError(f"unknown engine kind {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    inputs = tensor_inputs(example_inputs)
    if not inputs:
        raise EngineError("example_inputs holds no tensors: pass the keywords of one transformer call")
    device = model_device(transformer)
    misplaced = [name for name, t in inputs.items() if t.device != device]
    if misplaced:
        raise EngineError(f"example inputs {misplaced} are not on the transformer's device {device}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
                                      and tolerance >= 0):
        raise EngineError(f"tolerance must be a number >= 0, got {tolerance!r}")
    return inputs, device


def check_engine_request(kind: str, device: torch.device | str, dtype: torch.dtype | None = None,
                         cache_dir: str | Path | None = None, exporter: str = "auto") -> None:
    """Refuse an engine that cannot run for a model on ``device`` in ``dtype`` (None: not known
    yet), before a model loads or a step runs: an unknown kind or exporter, a CUDA engine elsewhere,
    onnxruntime off CPU or in bfloat16, its runtime not installed, a file where the cache folder
    goes. Writes nothing (what only a build needs is checked by :func:`refuse_unbuildable`)."""
    if kind not in ENGINE_KINDS:
        raise EngineError(f"unknown engine kind {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    device = torch.device(device)
    if kind in CUDA_ONLY_KINDS and device.type != "cuda":
        raise EngineError(f"the {kind} engine needs the model on CUDA; it is on {device}")
    if kind == "onnxruntime" and device.type != "cpu":
        raise EngineError(f"the onnxruntime engine runs on CPU (to verify an export); the model is on {device}: "
                          "use tensorrt or compile on a GPU")
    if kind == "onnxruntime" and dtype == torch.bfloat16:
        raise EngineError("onnxruntime takes no bfloat16 (numpy has none): load the model in float32 to verify "
                          "an export")
    if kind not in ("onnxruntime", "tensorrt"):
        return
    if exporter not in EXPORTERS:
        raise EngineError(f"unknown ONNX exporter {exporter!r}: use {', '.join(EXPORTERS)}")
    if kind == "onnxruntime":
        require_packages("onnxruntime")
    problem = tensorrt_import_error() if kind == "tensorrt" else None
    if problem is not None:
        raise EngineError(f"TensorRT is not importable ({problem}); use kind='compile' or 'eager'")
    check_cache_path(cache_dir)


def refuse_unbuildable(kind: str, transformer: torch.nn.Module, inputs: dict[str, torch.Tensor],
                       cache_dir: str | Path | None = None, exporter: str = "auto", opset: int = DEFAULT_OPSET,
                       optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> bool:
    """What would refuse ``kind`` here, refused before its cost is announced or paid (an export of
    FLUX.1-dev writes ~24 GB before onnxruntime could say it takes no bfloat16). Returns whether
    the engine is already cached (then a read-only cache and no exporter packages will do)."""
    check_engine_request(kind, model_device(transformer), model_dtype(transformer), cache_dir, exporter)
    if kind == "onnxruntime":
        unsupported = sorted(name for name, t in inputs.items() if t.dtype == torch.bfloat16)
        if unsupported:
            raise EngineError(f"onnxruntime takes no bfloat16 (numpy has none): the inputs {unsupported} are "
                              "bfloat16; verify a float32 export")
    if kind not in ("onnxruntime", "tensorrt"):
        return False
    if kind == "tensorrt":
        cached = cached_tensorrt_plan(transformer, inputs, model_device(transformer), cache_dir, opset,
                                      optimization_level) is not None
    else:
        _, entry = onnx_cache_entry(transformer, InputSignature.from_inputs(inputs), cache_dir, opset)
        cached = entry_complete(entry, (ONNX_FILE,))
    if not cached:
        require_packages(*export_packages(exporter))
        usable_cache_dir(cache_dir)
    return cached


def _cached_or_eager(transformer: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                     options: dict[str, Any], check: dict[str, Any]) -> PlainStepEngine:
    """"auto": a TensorRT plan already on disk for these shapes, else eager; never a new build."""
    plan = cached_tensorrt_plan(transformer, inputs, device, options["cache_dir"], options["opset"],
                                options["tensorrt_optimization_level"])
    if plan is not None:
        logger.info("plain-step engine: reusing the cached TensorRT plan %s", plan)
        engine = _build("tensorrt", transformer, inputs, f"a TensorRT plan for these shapes is cached at {plan}",
                        **options)
        return _verified(engine, transformer, inputs, **check)
    return EagerEngine(transformer, AUTO_EAGER_REASON)


def cached_tensorrt_plan(transformer: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                         cache_dir: str | Path | None, opset: int = DEFAULT_OPSET,
                         optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> Path | None:
    """The cached TensorRT plan for ``transformer`` at these inputs, when one exists and can run here."""
    if device.type != "cuda" or tensorrt_import_error() is not None:
        return None
    export_key, export_dir = onnx_cache_entry(transformer, InputSignature.from_inputs(inputs), cache_dir, opset)
    if not entry_complete(export_dir, (ONNX_FILE,)):
        return None
    root = Path(cache_dir) if cache_dir is not None else export_dir.parent
    return cached_plan_path(export_key, plan_options(optimization_level), root)


def announce_build(kind: str, transformer: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   cache_dir: str | Path | None, regional: bool = False) -> None:
    """One log line (a warning: on stderr by default) before a build, saying what it will cost."""
    if kind == "eager":
        return
    millions = sum(p.numel() for p in transformer.parameters()) / 1e6
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    whole = "repeated blocks (compiled once per block kind) of the" if regional else "whole"
    cost = BUILD_COSTS[kind].format(params=f"{millions:,.1f}M", cache=where, compile_cache=compile_cache_dir(),
                                    whole=whole)
    # Every rank of a spread run builds its own engine: the line is said once a machine.
    logger.warning("building the %s plain-step engine for %s: expected cost: %s",
                   kind, InputSignature.from_inputs(inputs).describe(), cost, extra=EVERY_PROCESS)


def _build(
    kind: str,
    transformer: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    reason: str,
    *,
    compile_backend: str,
    compile_mode: str | None,
    regional_compile: bool,
    cache_dir: str | Path | None,
    opset: int,
    exporter: Exporter,
    tensorrt_optimization_level: int,
) -> PlainStepEngine:
    # Imported here, not at the top: l2s.steer loads diffusers, which importing l2s.engines does not need.
    from l2s.steer.compiled import enable_compile_cache

    signature = InputSignature.from_inputs(inputs)
    if kind == "eager":
        return EagerEngine(transformer, reason)
    if kind == "compile":
        enable_compile_cache()
        return CompiledEngine(transformer, compile_backend, compile_mode, regional=regional_compile, reason=reason)
    if kind in ("cuda-graph", "compile-cuda-graph", "onnxruntime", "tensorrt"):
        _refuse_custom_processors(transformer, kind)
    if kind == "cuda-graph":
        return CudaGraphEngine(EagerEngine(transformer)._forward, signature, "cuda-graph", reason)
    if kind == "compile-cuda-graph":
        enable_compile_cache()
        compiled = CompiledEngine(transformer, compile_backend, compile_mode or CUDA_GRAPH_COMPILE_MODE,
                                  regional=regional_compile)
        engine = CudaGraphEngine(compiled._forward, signature, f"{compiled.name}+cuda-graph", reason)
        engine.kind = "compile"
        return engine
    if kind == "onnxruntime":
        export = export_transformer_onnx(transformer, inputs, cache_dir, opset, exporter)
        return OnnxRuntimeEngine(export, reason=f"{reason}; {_describe_export(export)}")
    if kind == "tensorrt":    # refuse_unbuildable has checked CUDA and TensorRT
        export = export_transformer_onnx(transformer, inputs, cache_dir, opset, exporter)
        plan = build_tensorrt_plan(export, cache_dir, optimization_level=tensorrt_optimization_level)
        plan_note = "reused cached plan" if plan.reused else f"built plan in {plan.seconds:.0f} s"
        engine = TensorRTEngine(plan, reason=f"{reason}; {_describe_export(export)}; {plan_note} {plan.path}")
        engine.export = export    # a plan rebuilt from a damaged cached export fails again: both are named
        return engine
    raise EngineError(f"unknown engine kind {kind!r}")


def _verified(
    engine: PlainStepEngine,
    transformer: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    verify: bool,
    tolerance: float | None,
    expected: torch.Tensor | None = None,
) -> PlainStepEngine:
    """Run ``engine`` once against eager on ``inputs`` (``expected``: eager's output, taken before
    the build); record the error in ``reason`` or raise."""
    if not verify or isinstance(engine, EagerEngine):
        return engine
    limit = tolerance if tolerance is not None else DEFAULT_TOLERANCE.get(model_dtype(transformer), 1e-3)
    if expected is None:
        expected = EagerEngine(transformer)(**inputs)
    actual = engine(**inputs)
    if actual.shape != expected.shape:
        raise EngineError(f"{engine.name} returned shape {list(actual.shape)}, eager {list(expected.shape)}")
    error = relative_error(actual, expected)
    if not error <= limit:  # also catches NaN
        raise EngineError(
            f"{engine.name} disagrees with eager on the example inputs: relative error {error:.2e} > {limit:.0e}"
            + _cached_source_advice(engine)
        )
    engine.reason = f"{engine.reason}; matches eager on the example inputs (relative error {error:.1e} <= {limit:.0e})"
    logger.info("plain-step engine %s: %s", engine.name, engine.reason)
    return engine


def _cached_source_advice(engine: PlainStepEngine) -> str:
    """Where a frozen engine that was read from the cache came from, and how to rebuild it: a damaged
    file of the right size passes the cache's checks and would fail the same way on every run."""
    artefacts = (getattr(engine, "export", None), getattr(engine, "plan", None))
    folders = [str(artefact.path.parent) for artefact in artefacts if artefact is not None and artefact.reused]
    if not folders:
        return ""
    if len(folders) == 1:
        return f"; it was read from the cache entry {folders[0]}: delete that folder to build it again"
    return f"; it was read from the cache entries {' and '.join(folders)}: delete those folders to build it again"


def compile_cache_dir() -> str:
    """Where torch's inductor keeps compiled kernels (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _describe_export(export: Any) -> str:
    how = "reused cached ONNX export" if export.reused else f"exported ONNX in {export.seconds:.1f} s"
    return f"{how} ({export.exporter} exporter, opset {export.opset}) {export.path}"


def _refuse_custom_processors(transformer: torch.nn.Module, kind: str) -> None:
    """Frozen engines bake the current attention processors in; a capture processor must not be."""
    custom = [name for name in attention_processor_names(transformer) if not name.startswith("diffusers.")]
    if custom:
        raise EngineError(
            f"the {kind} engine would freeze the non-diffusers attention processors {custom} into its "
            "graph; build it before installing them (or restore diffusers' processors first)"
        )
