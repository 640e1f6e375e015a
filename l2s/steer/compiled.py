"""``torch.compile`` of a whole steering evaluation: the FLUX steered forward, the classifier, and
(through AOTAutograd) their backward, each one graph.

The steered forward (:class:`~l2s.capture.FluxSteeredForward`) is a plain function of tensors:
every index-like input (token selector, the relation's group pair and class, the classifier's
step) is a device tensor made once per prompt and the step's constants are tensors too, so one
compiled graph serves every prompt, relation and step of a resolution; only a new input shape
compiles again. The compile cache is enabled so a second process reuses the kernels.
"""
from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable

import torch

from l2s.distributed import EVERY_PROCESS

logger = logging.getLogger(__name__)


def enable_compile_cache() -> None:
    """Keep compiled kernels (inductor's FX graph cache) and their backward graphs (AOTAutograd's
    cache) on disk, so a second process reuses them instead of compiling again."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. Dynamo keeps compiled graphs (and counts recompiles
    against its limit) per code object, and every evaluation closes over its own model and
    classifier, which its guards check: without this, the ninth steering pipeline of a process
    would exceed the recompile limit and fail."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


class CompiledSteering:
    """``fn`` compiled for static shapes (``backend``/``mode`` as ``torch.compile`` takes them;
    ``mode="reduce-overhead"`` replays CUDA graphs). :attr:`cold_seconds` sums the wall time of
    the first forward + backward at each new latent shape: the cold compile plus that pass;
    :attr:`calls` counts the passes run through it."""

    def __init__(self, fn: Callable, backend: str = "inductor", mode: str | None = None) -> None:
        options = {"backend": backend, "dynamic": False, "fullgraph": True}
        if mode is not None:
            options["mode"] = mode
        if backend == "inductor":
            enable_compile_cache()
        self.fn = torch.compile(own_code(fn), **options)
        self._seen: set[tuple] = set()
        self.cold_seconds = 0.0
        self.calls = 0

    def __call__(self, z: torch.Tensor, *args) -> torch.Tensor:
        self.calls += 1
        self._time_if_cold(z)
        return self.fn(z, *args)

    def _time_if_cold(self, z: torch.Tensor) -> None:
        """If ``z``'s shape is new, time from now to the end of its backward (a hook on its grad)."""
        signature = (tuple(z.shape), z.dtype, z.device)
        if signature in self._seen or not z.requires_grad:
            return
        self._seen.add(signature)
        # The progress bar stands still meanwhile (minutes, cold on a CPU): say why, once a machine.
        logger.warning("compiling the steering evaluation for latents of shape %s (the first pass at each new "
                       "shape; minutes on a CPU when torch's compile cache has no kernels for it yet)",
                       tuple(z.shape), extra=EVERY_PROCESS)
        started = time.perf_counter()

        def finished(grad: torch.Tensor) -> torch.Tensor:
            self.cold_seconds += time.perf_counter() - started
            return grad

        z.register_hook(finished)
