"""What every plain-step engine shares: the calling convention, the static input signature, errors.

A *plain* denoising step is a transformer forward with no steering: no gradient, no attention
capture. Such steps can run on something faster than eager PyTorch (torch.compile, a CUDA graph,
TensorRT). Every engine is called exactly like ``FluxTransformer2DModel.forward`` with keyword
tensors and returns the ``sample`` tensor (the noise / velocity prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import torch

from l2s.errors import L2SError

# FluxTransformer2DModel.forward's tensor arguments, in its own order. Exported graphs and
# TensorRT engines take them positionally in this order (absent ones, e.g. guidance on
# schnell-like models, are left out).
FLUX_TENSOR_INPUTS: tuple[str, ...] = (
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "img_ids",
    "txt_ids",
    "guidance",
)
# Non-tensor keywords the pipelines pass; accepted so an engine is a drop-in for the transformer.
PASS_THROUGH_KEYWORDS: tuple[str, ...] = ("joint_attention_kwargs", "return_dict")

ENGINE_KINDS: tuple[str, ...] = (
    "auto", "eager", "compile", "compile-cuda-graph", "cuda-graph", "onnxruntime", "tensorrt",
)
CUDA_ONLY_KINDS: tuple[str, ...] = ("compile-cuda-graph", "cuda-graph", "tensorrt")  # refused on other devices


class EngineError(L2SError):
    """An engine cannot be built or run as asked (missing backend, wrong device, shape mismatch)."""


@runtime_checkable
class PlainStepEngine(Protocol):
    """A callable that computes the transformer's ``sample`` for a plain (unsteered) step.

    ``name`` says what runs (e.g. ``"compile[inductor]"``), ``kind`` is the factory kind that
    built it, and ``reason`` says why that engine was chosen, so nothing is swapped silently.
    """

    name: str
    kind: str
    reason: str

    def __call__(self, **transformer_kwargs: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one static engine input."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class InputSignature:
    """The fixed inputs a static engine (CUDA graph, ONNX, TensorRT) was built for, in call order."""

    specs: tuple[TensorSpec, ...]

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, torch.Tensor]) -> "InputSignature":
        tensors = tensor_inputs(inputs)
        return cls(tuple(TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def describe(self) -> str:
        """A stable text form, used in cache keys and error messages."""
        return ", ".join(
            f"{s.name}{list(s.shape)}:{str(s.dtype).removeprefix('torch.')}" for s in self.specs
        )

    def check(self, inputs: Mapping[str, torch.Tensor], engine_name: str) -> None:
        """Raise :class:`EngineError` unless ``inputs`` has exactly this signature's names, shapes and dtypes."""
        if tuple(inputs) != self.names:
            raise EngineError(
                f"{engine_name} was built for inputs ({', '.join(self.names)}) "
                f"but got ({', '.join(inputs)})"
            )
        for spec in self.specs:
            tensor = inputs[spec.name]
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise EngineError(
                    f"{engine_name} has static shapes: it was built for {self.describe()} but "
                    f"{spec.name} is {list(tensor.shape)}:{str(tensor.dtype).removeprefix('torch.')}; "
                    "build another engine for this shape"
                )


def tensor_inputs(kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The transformer's tensor arguments from a forward's keywords, in forward order.

    ``None`` values (no guidance) are dropped; ``joint_attention_kwargs`` and ``return_dict`` are
    ignored here (see :func:`reject_attention_kwargs`); any other keyword is an error, so a typo
    cannot silently drop an input.
    """
    unknown = set(kwargs) - set(FLUX_TENSOR_INPUTS) - set(PASS_THROUGH_KEYWORDS)
    if unknown:
        raise EngineError(
            f"unexpected transformer inputs {sorted(unknown)}; plain-step engines take "
            f"{', '.join(FLUX_TENSOR_INPUTS)}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in FLUX_TENSOR_INPUTS:
        value = kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise EngineError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        tensors[name] = value
    return tensors


def reject_attention_kwargs(kwargs: Mapping[str, Any], engine_name: str) -> None:
    """Frozen engines (graphs, ONNX, TensorRT) cannot honour per-call attention keywords."""
    if kwargs.get("joint_attention_kwargs"):
        raise EngineError(
            f"{engine_name} runs a frozen graph and cannot take joint_attention_kwargs; "
            "use the eager or compile engine for steps that need them"
        )


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter (FLUX models live on one device)."""
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def example_flux_inputs(
    transformer: torch.nn.Module,
    batch_size: int = 1,
    latent_grid: tuple[int, int] = (4, 4),
    text_tokens: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random inputs shaped like a FluxPipeline step for ``transformer`` (for building and tests).

    ``latent_grid`` is the packed token grid (image side / 16 for FLUX: 512 px -> (32, 32)). Ids
    and dtypes follow ``FluxPipeline``: ids in the latent dtype, guidance in float32 and only when
    the model embeds it.
    """
    from diffusers import FluxPipeline

    config = transformer.config
    device, dtype = model_device(transformer), model_dtype(transformer)
    generator = torch.Generator().manual_seed(seed)
    height, width = latent_grid

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    inputs = {
        "hidden_states": randn(batch_size, height * width, config.in_channels),
        "encoder_hidden_states": randn(batch_size, text_tokens, config.joint_attention_dim),
        "pooled_projections": randn(batch_size, config.pooled_projection_dim),
        "timestep": torch.full((batch_size,), 0.5, device=device, dtype=dtype),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch_size, height, width, device, dtype),
        "txt_ids": torch.zeros(text_tokens, 3, device=device, dtype=dtype),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch_size,), 3.5, device=device, dtype=torch.float32)
    return inputs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64: one number for any scale and dtype."""
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual64 - expected64).norm() / expected64.norm().clamp_min(1e-30))
