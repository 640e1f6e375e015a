"""Inference-engine tooling of l2s (export, build, run), installed as ``l2s.engines``.

Plain (unsteered) denoising steps need no gradient, so they can run on a faster engine than the
eager transformer; steered steps always stay in PyTorch. :func:`make_plain_step_engine` builds one
(eager, torch.compile, CUDA graph, onnxruntime or TensorRT), checks it against eager, and says in
``engine.name`` / ``engine.reason`` what runs and why.

The exporters need the optional ``onnx`` extra (onnx, onnxruntime, onnxscript); TensorRT needs
NVIDIA's ``tensorrt`` wheel and a CUDA GPU.
"""

from .base import (
    CUDA_ONLY_KINDS,
    ENGINE_KINDS,
    FLUX_TENSOR_INPUTS,
    EngineError,
    InputSignature,
    PlainStepEngine,
    TensorSpec,
    example_flux_inputs,
    relative_error,
)
from .cache import default_cache_dir, model_cache_key, weight_fingerprint
from .factory import DEFAULT_TOLERANCE, check_engine_request, make_plain_step_engine
from .onnx_export import (
    OnnxExport,
    OnnxRuntimeEngine,
    PositionalSampleModule,
    export_transformer_onnx,
)
from .tensorrt_engine import (
    TensorRTEngine,
    TensorRTPlan,
    build_tensorrt_plan,
    require_tensorrt,
    tensorrt_import_error,
)
from .torch_engines import CompiledEngine, CudaGraphEngine, EagerEngine

__all__ = [
    "CUDA_ONLY_KINDS",
    "ENGINE_KINDS",
    "FLUX_TENSOR_INPUTS",
    "DEFAULT_TOLERANCE",
    "CompiledEngine",
    "CudaGraphEngine",
    "EagerEngine",
    "EngineError",
    "InputSignature",
    "OnnxExport",
    "OnnxRuntimeEngine",
    "PlainStepEngine",
    "PositionalSampleModule",
    "TensorRTEngine",
    "TensorRTPlan",
    "TensorSpec",
    "build_tensorrt_plan",
    "check_engine_request",
    "default_cache_dir",
    "example_flux_inputs",
    "export_transformer_onnx",
    "make_plain_step_engine",
    "model_cache_key",
    "relative_error",
    "require_tensorrt",
    "tensorrt_import_error",
    "weight_fingerprint",
]
