"""TensorRT: build a static-shape engine from the ONNX export, cache the plan, run it on torch tensors.

TensorRT has no autograd, so it only serves plain steps. The engine holds its own copy of the
weights (a second ~24 GB for FLUX.1 in bf16 next to the PyTorch model that steered steps need).

Precision follows the ONNX types by default (a *strongly typed* network): export the model in
bfloat16 to get a bfloat16 engine. The rotary embedding is computed in float64 by diffusers;
TensorRT's ONNX parser casts it to float32, which is exact enough for positions < 2**24.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import EngineError, InputSignature, reject_attention_kwargs, tensor_inputs
from .cache import derived_key, entry_complete, staged_entry, write_meta
from .onnx_export import OUTPUT_NAME, OnnxExport

logger = logging.getLogger(__name__)

PLAN_FILE = "engine.plan"
# NVIDIA's FLUX demo builds at level 3 to bound build-time GPU memory; 5 searches longest.
DEFAULT_OPTIMIZATION_LEVEL = 3


def tensorrt_import_error() -> str | None:
    """None when ``import tensorrt`` works, else why it does not (for reasons and skip messages)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # a broken install raises OSError etc., not only ImportError
        return f"{type(error).__name__}: {error}"
    return None


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise :class:`EngineError` saying how to get it."""
    problem = tensorrt_import_error()
    if problem is not None:
        raise EngineError(
            f"TensorRT is not importable ({problem}). It needs an NVIDIA GPU and "
            "`pip install tensorrt` (NVIDIA's wheels, downloaded from pypi.nvidia.com); "
            "use kind='compile' or 'eager' otherwise"
        )
    import tensorrt

    return tensorrt


@dataclass(frozen=True)
class TensorRTPlan:
    """A cached, serialized TensorRT engine and what it was built from."""

    path: Path
    key: str
    signature: InputSignature
    reused: bool
    seconds: float


def plan_options(optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, strongly_typed: bool = True,
                 extra_precisions: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything besides the export that a plan depends on (its cache key), for this GPU."""
    trt = require_tensorrt()
    device = torch.cuda.current_device()
    return {
        "artefact": "tensorrt",
        "optimization_level": optimization_level,
        "strongly_typed": strongly_typed,
        "extra_precisions": sorted(extra_precisions),
        "gpu": torch.cuda.get_device_name(device),
        "capability": torch.cuda.get_device_capability(device),
        "tensorrt": trt.__version__,
    }


def plan_cache_entry(export_key: str, options: dict[str, Any], root: str | Path) -> tuple[str, Path]:
    """(key, directory) of the cached plan built from export ``export_key`` with ``options``."""
    key = derived_key(export_key, options)
    return key, Path(root) / f"tensorrt-{key}"


def cached_plan_path(export_key: str, options: dict[str, Any], root: str | Path) -> Path | None:
    """The plan file when a complete plan for this export and options is cached, else None."""
    _, entry = plan_cache_entry(export_key, options, root)
    if entry_complete(entry, (PLAN_FILE,)):
        return entry / PLAN_FILE
    return None


def build_tensorrt_plan(
    export: OnnxExport,
    cache_dir: str | Path | None = None,
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
    strongly_typed: bool = True,
    extra_precisions: tuple[str, ...] = (),
    workspace_bytes: int | None = None,
) -> TensorRTPlan:
    """Build (or reuse) a TensorRT plan for ``export`` on the current CUDA device.

    ``strongly_typed=True`` keeps the ONNX precisions (bf16 export -> bf16 engine). With
    ``strongly_typed=False`` the builder may pick lower precisions listed in ``extra_precisions``
    ("fp16", "bf16", "tf32") per layer. The plan is cached beside the export, keyed by the export,
    these options, the TensorRT version and the GPU (plans are not portable across either).
    """
    trt = require_tensorrt()
    if not torch.cuda.is_available():
        raise EngineError("building a TensorRT engine needs a CUDA device; torch sees none")
    if strongly_typed and set(extra_precisions) - {"tf32"}:
        raise EngineError(
            "a strongly typed build keeps the ONNX precisions: export in bf16/fp16 instead, or pass "
            "strongly_typed=False to let the builder lower float32 layers"
        )
    options = plan_options(optimization_level, strongly_typed, extra_precisions)
    key, entry = plan_cache_entry(export.key, options, cache_dir if cache_dir is not None else export.directory.parent)
    if entry_complete(entry, (PLAN_FILE,)):
        return TensorRTPlan(entry / PLAN_FILE, key, export.signature, True, 0.0)

    start = time.perf_counter()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # The parser holds the weights the network points at: it lives until the build below is done.
    network, parser = _parsed_network(trt, builder, trt_logger, export, strongly_typed)
    config = _builder_config(trt, builder, optimization_level, workspace_bytes, extra_precisions)
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {export.path} (see its log above)")
    with staged_entry(entry, (PLAN_FILE,)) as scratch:
        (scratch / PLAN_FILE).write_bytes(bytes(serialized))
        write_meta(scratch, {"key": key, "onnx_key": export.key, "inputs": export.signature.describe(), **options})
    seconds = time.perf_counter() - start
    logger.info("built TensorRT engine %s in %.0f s", entry, seconds)
    return TensorRTPlan(entry / PLAN_FILE, key, export.signature, False, seconds)


def _parsed_network(trt, builder, trt_logger, export: OnnxExport, strongly_typed: bool):
    """(network, parser) of ``export``'s ONNX graph; the parser must outlive the network's build."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    # parse_from_file (not parse(bytes)) so the parser finds model.onnx.data next to the graph.
    if not parser.parse_from_file(str(export.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {export.path}: {errors}")
    return network, parser


def _builder_config(trt, builder, optimization_level: int, workspace_bytes: int | None,
                    extra_precisions: tuple[str, ...]):
    """The build's options: optimization level, workspace, and the lower precisions allowed."""
    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    # TF32 is on by default; float32 layers should compute like PyTorch's (TF32 off) unless asked.
    config.clear_flag(trt.BuilderFlag.TF32)
    precision_flags = {"fp16": trt.BuilderFlag.FP16, "bf16": trt.BuilderFlag.BF16, "tf32": trt.BuilderFlag.TF32}
    for precision in extra_precisions:
        if precision not in precision_flags:
            raise EngineError(f"unknown precision {precision!r}: use {sorted(precision_flags)}")
        config.set_flag(precision_flags[precision])
    return config


class TensorRTEngine:
    """Runs a TensorRT plan on CUDA torch tensors, enqueued on the current torch stream."""

    kind = "tensorrt"

    def __init__(self, plan: TensorRTPlan, reason: str = "requested explicitly") -> None:
        trt = require_tensorrt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.path.read_bytes())
        if self._engine is None:
            raise EngineError(f"TensorRT could not load {plan.path} (built by another version or GPU?)")
        self._context = self._engine.create_execution_context()
        self.plan = plan
        self.signature = plan.signature
        self.name = "tensorrt"
        self.reason = reason
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(inputs) != sorted(self.signature.names) or OUTPUT_NAME not in names:
            raise EngineError(
                f"the TensorRT engine's tensors {names} do not match the export's "
                f"inputs {self.signature.names} and output {OUTPUT_NAME!r}"
            )
        self._output_shape = tuple(self._context.get_tensor_shape(OUTPUT_NAME))
        self._output_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(OUTPUT_NAME))
        self._input_dtypes = {n: _torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in inputs}

    def __call__(self, **transformer_kwargs: Any) -> torch.Tensor:
        reject_attention_kwargs(transformer_kwargs, self.name)
        inputs = tensor_inputs(transformer_kwargs)
        self.signature.check(inputs, self.name)
        bound: list[torch.Tensor] = []  # keep contiguous copies alive until the enqueue
        for name, tensor in inputs.items():
            if not tensor.is_cuda:
                raise EngineError(f"{self.name} takes CUDA tensors; {name} is on {tensor.device}")
            if tensor.dtype != self._input_dtypes[name]:
                raise EngineError(
                    f"{self.name}: the engine's {name} is {self._input_dtypes[name]}, got {tensor.dtype}"
                )
            tensor = tensor.contiguous()
            bound.append(tensor)
            self._context.set_tensor_address(name, tensor.data_ptr())
        device = bound[0].device
        sample = torch.empty(self._output_shape, dtype=self._output_dtype, device=device)
        self._context.set_tensor_address(OUTPUT_NAME, sample.data_ptr())
        stream = torch.cuda.current_stream(device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see its log)")
        return sample


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    mapping = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    if dtype not in mapping:
        raise EngineError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return mapping[dtype]
