"""Regional ``torch.compile`` of the transformer blocks that steered passes run (forward + backward).

One compiled function per block class serves every block of that class (weights are graph
inputs), so FLUX.1-dev's 19 double and 38 single blocks compile two graphs, not 57; the capture
processors keep their per-layer bookkeeping outside the graph (``torch.compiler.disable``), so a
layer's name never becomes a guard. The compiled forwards are swapped in only while a steered step
runs: plain steps keep the stock blocks (or their engine).
"""
from __future__ import annotations

import contextlib
import time
import types
from typing import Iterator

import torch

from l2s.errors import UsageError


def enable_compile_cache() -> None:
    """Keep compiled kernels (inductor's FX graph cache) and their backward graphs (AOTAutograd's
    cache) on disk, so a second process reuses them instead of compiling again."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def repeated_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks (diffusers' ``_repeated_blocks``) in module order."""
    names = set(getattr(denoiser, "_repeated_blocks", None) or ())
    return [module for module in denoiser.modules() if type(module).__name__ in names]


class CompiledBlocks:
    """Compiled forwards of a FLUX transformer's blocks, active inside :meth:`active` only.

    ``backend``/``mode`` go to ``torch.compile`` (``mode="reduce-overhead"`` replays CUDA graphs on
    CUDA, where steered passes have static shapes). :attr:`cold_seconds` sums the wall time of
    the first forward + backward at each new input shape: the cold compile plus that pass.
    """

    def __init__(self, denoiser: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> None:
        from diffusers import FluxTransformer2DModel

        if not isinstance(denoiser, FluxTransformer2DModel):
            raise UsageError(f"compiled steering supports FLUX transformers, not {type(denoiser).__name__}; "
                             "use mode='fast'")
        self.blocks = repeated_blocks(denoiser)
        options = {"backend": backend, "dynamic": False}
        if mode is not None:
            options["mode"] = mode
        if backend == "inductor":
            enable_compile_cache()
        self._forwards = {cls: torch.compile(cls.forward, **options) for cls in {type(b) for b in self.blocks}}
        self._seen: set[tuple] = set()
        self.cold_seconds = 0.0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Route the blocks' forwards through their compiled functions inside this block."""
        # A forward set on the instance (an offload hook, say) is what the compiled one replaces
        # and what comes back afterwards.
        previous = [block.__dict__.get("forward") for block in self.blocks]
        for block in self.blocks:
            block.forward = types.MethodType(self._forwards[type(block)], block)
        try:
            yield
        finally:
            for block, forward in zip(self.blocks, previous):
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward

    def time_if_cold(self, z: torch.Tensor) -> None:
        """If ``z``'s shape is new, time from now to the end of its backward (a hook on its grad)."""
        signature = (tuple(z.shape), z.dtype, z.device)
        if signature in self._seen or not z.requires_grad:
            return
        self._seen.add(signature)
        started = time.perf_counter()

        def finished(grad: torch.Tensor) -> torch.Tensor:
            self.cold_seconds += time.perf_counter() - started
            return grad

        z.register_hook(finished)
