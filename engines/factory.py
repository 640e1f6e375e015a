"""Choose, build and verify the engine that runs plain denoising steps."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import (
    ENGINE_KINDS,
    EngineError,
    InputSignature,
    PlainStepEngine,
    model_device,
    model_dtype,
    relative_error,
    tensor_inputs,
)
from .cache import attention_processor_names
from .onnx_export import DEFAULT_OPSET, Exporter, OnnxRuntimeEngine, export_transformer_onnx
from .tensorrt_engine import (
    DEFAULT_OPTIMIZATION_LEVEL,
    TensorRTEngine,
    build_tensorrt_plan,
    tensorrt_import_error,
)
from .torch_engines import CompiledEngine, CudaGraphEngine, EagerEngine

logger = logging.getLogger(__name__)

# Relative (norm-wise) error allowed against eager on the example inputs. Float32 engines differ
# from eager only in reduction order; half-precision ones also in rounding of fused ops.
DEFAULT_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# On CUDA, "auto" without TensorRT compiles like this and replays a CUDA graph (static shapes).
AUTO_CUDA_COMPILE_MODE = "max-autotune-no-cudagraphs"


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

    * ``"auto"``: TensorRT when ``import tensorrt`` works and the model is on CUDA; else on CUDA
      ``torch.compile`` (``max-autotune-no-cudagraphs``) replayed as a CUDA graph; on CPU eager.
      A candidate that fails to build or to verify is skipped, and the reason says so (and warns).
    * ``"eager"``, ``"compile"`` (``compile_backend``/``compile_mode``/``regional_compile``),
      ``"cuda-graph"`` (eager forward captured once), ``"onnxruntime"`` (CPU, for verification),
      ``"tensorrt"``: exactly that engine, or :class:`EngineError`.

    Unless ``verify=False``, a non-eager engine is run once on the example inputs and compared with
    eager; a relative error above ``tolerance`` (default by dtype, see ``DEFAULT_TOLERANCE``) raises.
    This also moves compilation/capture out of the first denoising step. ``cache_dir`` holds
    ONNX exports and TensorRT plans (default :func:`~l2s.engines.cache.default_cache_dir`).

    The result's ``name`` says what runs, ``reason`` why it was chosen and how it was checked.
    """
    if kind not in ENGINE_KINDS:
        raise EngineError(f"unknown engine kind {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    inputs = tensor_inputs(example_inputs)
    if not inputs:
        raise EngineError("example_inputs holds no tensors: pass the keywords of one transformer call")
    device = model_device(transformer)
    misplaced = [name for name, t in inputs.items() if t.device != device]
    if misplaced:
        raise EngineError(f"example inputs {misplaced} are not on the transformer's device {device}")
    options = dict(
        compile_backend=compile_backend, compile_mode=compile_mode, regional_compile=regional_compile,
        cache_dir=cache_dir, opset=opset, exporter=exporter,
        tensorrt_optimization_level=tensorrt_optimization_level,
    )
    check = dict(verify=verify, tolerance=tolerance)
    if kind != "auto":
        return _verified(_build(kind, transformer, inputs, "requested explicitly", **options), transformer, inputs, **check)

    skipped: list[str] = []
    for candidate, reason, overrides in _auto_candidates(device):
        if skipped:
            reason = f"{reason}; skipped {'; '.join(skipped)}"
        try:
            engine = _build(candidate, transformer, inputs, reason, **{**options, **overrides})
            return _verified(engine, transformer, inputs, **check)
        except Exception as error:  # noqa: BLE001 - any failure of a faster engine is reported, then skipped
            if candidate == "eager":
                raise
            skipped.append(f"{candidate} ({type(error).__name__}: {error})")
            warnings.warn(f"plain-step engine {candidate!r} unavailable, trying the next: {error}", stacklevel=2)
    raise AssertionError("unreachable: eager is always the last candidate")


def _auto_candidates(device: torch.device) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, reason, option overrides) in order of preference for ``device``; eager comes last."""
    if device.type != "cuda":
        return [(
            "eager",
            f"the transformer is on {device.type}: TensorRT and CUDA graphs need CUDA, and a cold "
            "torch.compile (~30 s on 2 CPU cores even for a 1-block model) is not repaid by a few "
            "plain steps; ask for kind='compile' to compile anyway",
            {},
        )]
    candidates: list[tuple[str, str, dict[str, Any]]] = []
    problem = tensorrt_import_error()
    if problem is None:
        candidates.append(("tensorrt", "TensorRT is importable and the transformer is on CUDA", {}))
        compile_reason = "TensorRT failed"
    else:
        compile_reason = f"TensorRT is not importable ({problem})"
    candidates.append((
        "compile-cuda-graph",
        f"{compile_reason}; on CUDA torch.compile ({AUTO_CUDA_COMPILE_MODE}) replayed as a CUDA graph "
        "since plain steps have static shapes",
        {"compile_mode": AUTO_CUDA_COMPILE_MODE},
    ))
    candidates.append(("eager", "every faster engine failed on this machine", {}))
    return candidates


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
    signature = InputSignature.from_inputs(inputs)
    if kind == "eager":
        return EagerEngine(transformer, reason)
    if kind == "compile":
        return CompiledEngine(transformer, compile_backend, compile_mode, regional=regional_compile, reason=reason)
    if kind in ("cuda-graph", "compile-cuda-graph", "onnxruntime", "tensorrt"):
        _refuse_custom_processors(transformer, kind)
    if kind == "cuda-graph":
        _require_cuda(transformer, kind)
        return CudaGraphEngine(EagerEngine(transformer)._forward, signature, "cuda-graph", reason)
    if kind == "compile-cuda-graph":
        _require_cuda(transformer, kind)
        compiled = CompiledEngine(transformer, compile_backend, compile_mode, regional=regional_compile)
        engine = CudaGraphEngine(compiled._forward, signature, f"{compiled.name}+cuda-graph", reason)
        engine.kind = "compile"
        return engine
    if kind == "onnxruntime":
        export = export_transformer_onnx(transformer, inputs, cache_dir, opset, exporter)
        return OnnxRuntimeEngine(export, reason=f"{reason}; {_describe_export(export)}")
    if kind == "tensorrt":
        _require_cuda(transformer, kind)
        problem = tensorrt_import_error()
        if problem is not None:  # before the (slow) export
            raise EngineError(f"TensorRT is not importable ({problem}); use kind='compile' or 'eager'")
        export = export_transformer_onnx(transformer, inputs, cache_dir, opset, exporter)
        plan = build_tensorrt_plan(export, cache_dir, optimization_level=tensorrt_optimization_level)
        plan_note = "reused cached plan" if plan.reused else f"built plan in {plan.seconds:.0f} s"
        return TensorRTEngine(plan, reason=f"{reason}; {_describe_export(export)}; {plan_note} {plan.path}")
    raise EngineError(f"unknown engine kind {kind!r}")


def _verified(
    engine: PlainStepEngine,
    transformer: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    verify: bool,
    tolerance: float | None,
) -> PlainStepEngine:
    """Run ``engine`` once against eager on ``inputs``; record the error in ``reason`` or raise."""
    if not verify or isinstance(engine, EagerEngine):
        return engine
    limit = tolerance if tolerance is not None else DEFAULT_TOLERANCE.get(model_dtype(transformer), 1e-3)
    expected = EagerEngine(transformer)(**inputs)
    actual = engine(**inputs)
    if actual.shape != expected.shape:
        raise EngineError(f"{engine.name} returned shape {list(actual.shape)}, eager {list(expected.shape)}")
    error = relative_error(actual, expected)
    if not error <= limit:  # also catches NaN
        raise EngineError(
            f"{engine.name} disagrees with eager on the example inputs: relative error {error:.2e} > {limit:.0e}"
        )
    engine.reason = f"{engine.reason}; matches eager on the example inputs (relative error {error:.1e} <= {limit:.0e})"
    logger.info("plain-step engine %s: %s", engine.name, engine.reason)
    return engine


def _describe_export(export: Any) -> str:
    how = "reused cached ONNX export" if export.reused else f"exported ONNX in {export.seconds:.1f} s"
    return f"{how} ({export.exporter} exporter, opset {export.opset}) {export.path}"


def _require_cuda(transformer: torch.nn.Module, kind: str) -> None:
    device = model_device(transformer)
    if device.type != "cuda":
        raise EngineError(f"the {kind} engine needs the transformer on CUDA; it is on {device}")


def _refuse_custom_processors(transformer: torch.nn.Module, kind: str) -> None:
    """Frozen engines bake the current attention processors in; a capture processor must not be."""
    custom = [name for name in attention_processor_names(transformer) if not name.startswith("diffusers.")]
    if custom:
        raise EngineError(
            f"the {kind} engine would freeze the non-diffusers attention processors {custom} into its "
            "graph; build it before installing them (or restore diffusers' processors first)"
        )
