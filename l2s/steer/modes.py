"""How a steered iteration is executed: the execution modes, and the kernels their passes may use."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from l2s.capture import AttentionCapture, ExplicitAttentionReference
from l2s.classifier import RelationClassifier
from l2s.errors import UsageError

# Why "sdpa": it measured faster than "native" on CPU (the bench group "capture") and on a GPU
# (the capture rows of bench/gpu_flux_dev.py's report in bench/results).
DEFAULT_CAPTURE_BACKEND = "sdpa"


@dataclass(frozen=True)
class ExecutionMode:
    """How a steered iteration is executed; every mode computes the same steering.

    ``reference`` is the published approach (explicit joint attention with materialised logits in
    every layer, eager fp32 classifier, full forward); it is kept to validate and benchmark the
    others. ``fast``: token-selected maps on fused kernels, forward cut after the last captured
    layer, on FLUX the lean steered forward (:class:`~l2s.capture.FluxSteeredForward`: what does
    not depend on the latent made once per step), classifier compiled on CUDA.
    ``fast+compiled``: ``fast`` with the whole iteration (FLUX steered forward, classifier, and
    their backward) under one ``torch.compile``, FLUX only; the first pass at each shape compiles.
    """

    name: str
    capture_cls: type
    stop_after_last_layer: bool
    compile_classifier: bool | None       # None: compile where it pays (CUDA)
    steered_forward: bool = False         # FLUX: run l2s's steered forward, not the stock one
    compile_steering: bool = False        # compile log p(target) of a latent whole (FLUX steered forward)
    compile_backend: str = "inductor"
    compile_mode: str | None = None       # "reduce-overhead": CUDA graphs (static shapes, CUDA only)

    @property
    def needs_cuda(self) -> bool:
        """It replays CUDA graphs, which exist on CUDA only."""
        return self.compile_mode == "reduce-overhead"


MODES = {
    "reference": ExecutionMode("reference", ExplicitAttentionReference, stop_after_last_layer=False,
                               compile_classifier=False),
    "fast": ExecutionMode("fast", AttentionCapture, stop_after_last_layer=True, compile_classifier=None,
                          steered_forward=True),
    "fast+compiled": ExecutionMode("fast+compiled", AttentionCapture, stop_after_last_layer=True,
                                   compile_classifier=None, steered_forward=True, compile_steering=True),
    "fast+cudagraphs": ExecutionMode("fast+cudagraphs", AttentionCapture, stop_after_last_layer=True,
                                     compile_classifier=None, steered_forward=True, compile_steering=True,
                                     compile_mode="reduce-overhead"),
}
# The modes a CPU can run (the CPU benches offer these, and refuse the others before a model loads).
CPU_MODES = tuple(name for name, mode in MODES.items() if not mode.needs_cuda)


def execution_mode(mode: str | ExecutionMode) -> ExecutionMode:
    """``mode`` itself, or the mode of that name; ``UsageError`` for an unknown name."""
    if isinstance(mode, ExecutionMode):
        return mode
    if mode not in MODES:
        raise UsageError(f"unknown execution mode {mode!r}; expected one of {', '.join(MODES)}")
    return MODES[mode]


def compile_classifier(classifier: RelationClassifier, device: torch.device,
                       dtype: torch.dtype | None = None):
    """The classifier's forward (and its backward to the maps) compiled for static shapes.

    On CUDA it runs in bf16 under CUDA graphs (``reduce-overhead``): the eager fp32 classifier is
    launch-bound. Returns a callable with the module's signature.
    """
    if dtype is not None:
        classifier = copy.deepcopy(classifier).to(dtype)     # leave the caller's fp32 model alone
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(classifier, dynamic=False, mode=mode)


def differentiable_sdpa(device: torch.device):
    """SDPA limited to the flash / memory-efficient / math kernels, for passes that are differentiated.

    cuDNN's SDPA backward failed for FLUX on an H100, so it is kept out of every backward pass.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
