"""Plain-step engines that stay in PyTorch: eager, torch.compile, and a captured CUDA graph.

All run under ``torch.no_grad`` (not ``inference_mode``: the latents a plain step produces are
later made to require grad by steered steps, which inference tensors forbid).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import EngineError, InputSignature, reject_attention_kwargs, tensor_inputs

SampleFunction = Callable[..., torch.Tensor]


def sample_function(module: Callable[..., Any]) -> SampleFunction:
    """Wrap a transformer (or its compiled form) as ``f(**tensors, joint_attention_kwargs=None) -> sample``."""

    def forward(joint_attention_kwargs: dict[str, Any] | None = None, **tensors: torch.Tensor) -> torch.Tensor:
        return module(**tensors, joint_attention_kwargs=joint_attention_kwargs, return_dict=False)[0]

    return forward


class _SampleEngine:
    """An engine whose ``_forward`` is a :func:`sample_function`: called with one transformer call's
    keywords, it runs the tensors (and any ``joint_attention_kwargs``) without autograd."""

    _forward: SampleFunction

    def __call__(self, **transformer_kwargs: Any) -> torch.Tensor:
        inputs = tensor_inputs(transformer_kwargs)
        with torch.no_grad():
            return self._forward(joint_attention_kwargs=transformer_kwargs.get("joint_attention_kwargs"), **inputs)


class EagerEngine(_SampleEngine):
    """The transformer itself, without autograd: the reference every other engine is checked against."""

    kind = "eager"

    def __init__(self, transformer: torch.nn.Module, reason: str = "requested explicitly") -> None:
        self.transformer = transformer
        self._forward = sample_function(transformer)
        self.name = "eager"
        self.reason = reason


class CompiledEngine(_SampleEngine):
    """``torch.compile`` of the transformer.

    By default the whole model is wrapped without touching it, so steered steps keep running the
    eager module. ``regional=True`` instead compiles the repeated blocks in place
    (``ModelMixin.compile_repeated_blocks``): far shorter cold compiles for the same speed, but the
    steered steps then run the compiled blocks too.
    """

    kind = "compile"

    def __init__(
        self,
        transformer: torch.nn.Module,
        backend: str = "inductor",
        mode: str | None = None,
        fullgraph: bool = False,
        regional: bool = False,
        reason: str = "requested explicitly",
    ) -> None:
        options: dict[str, Any] = {"backend": backend, "fullgraph": fullgraph}
        if mode is not None:
            options["mode"] = mode
        elif backend == "inductor" and _on_cpu(transformer) and _has_exp_tanh():
            # tanh as 2 / (1 + exp(-2x)) - 1, ~1e-7 off near 0: inductor's default CPU tanh (Sleef, 1 ulp)
            # is slow, and FLUX's GELUs run it on every token (bench/test_bench_gelu.py).
            options["options"] = {"cpp.use_decompose_tanh": True}
        if regional:
            transformer.compile_repeated_blocks(**options)
            compiled: Callable[..., Any] = transformer
        else:
            compiled = torch.compile(transformer, **options)
        self.transformer = transformer
        self._forward = sample_function(compiled)
        details = [backend] + ([mode] if mode else []) + (["regional"] if regional else [])
        self.name = f"compile[{', '.join(details)}]"
        self.reason = reason


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(parameter.device.type == "cpu" for parameter in module.parameters())


def _has_exp_tanh() -> bool:
    """Whether this torch's inductor has the option (an unknown option key fails the compile)."""
    import torch._inductor.config as inductor_config

    return hasattr(inductor_config.cpp, "use_decompose_tanh")


class CudaGraphEngine:
    """Replays one captured CUDA graph of a sample function for fixed input shapes.

    The first call warms the function up on a side stream (this is also when a compiled function
    compiles), captures it, then every call copies its inputs into the graph's static buffers,
    replays, and returns a copy of the output (the graph overwrites its buffer on the next replay).
    The attention processors installed at capture time are frozen into the graph.
    """

    kind = "cuda-graph"

    def __init__(
        self,
        forward: SampleFunction,
        signature: InputSignature,
        name: str = "cuda-graph",
        reason: str = "requested explicitly",
        warmup_calls: int = 2,
    ) -> None:
        if not torch.cuda.is_available():
            raise EngineError("a CUDA graph engine needs a CUDA device; torch sees none")
        self._forward = forward
        self.signature = signature
        self.name = name
        self.reason = reason
        self.warmup_calls = warmup_calls
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: dict[str, torch.Tensor] = {}
        self._static_output: torch.Tensor | None = None

    def _capture(self, inputs: dict[str, torch.Tensor]) -> None:
        self._static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup_calls):
                self._forward(**self._static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._static_output = self._forward(**self._static_inputs)
        self._graph = graph

    def __call__(self, **transformer_kwargs: Any) -> torch.Tensor:
        reject_attention_kwargs(transformer_kwargs, self.name)
        inputs = tensor_inputs(transformer_kwargs)
        self.signature.check(inputs, self.name)
        if any(not tensor.is_cuda for tensor in inputs.values()):
            raise EngineError(f"{self.name} takes CUDA tensors")
        if self._graph is None:
            self._capture(inputs)
        for name, tensor in inputs.items():
            self._static_inputs[name].copy_(tensor)
        self._graph.replay()
        return self._static_output.clone()
