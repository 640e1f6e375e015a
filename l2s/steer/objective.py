"""The steering objective: per-image log p(target relation) of a latent at one denoising step.

One evaluation reads along the data path: run the denoiser on ``z`` with map capture installed
-> the subject's and object's token-group maps -> the classifier's input -> classify ->
``log_softmax`` at the relation's class. :func:`~l2s.steer.refine.refine_latents` differentiates
it with respect to ``z``.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from l2s.capture import AttentionCapture, CapturedMaps, ExplicitAttentionReference
from l2s.classifier import RelationClassifier, step_index_for
from l2s.errors import UsageError

from .plan import SteeringPlan
from .refine import LogProbFn


@dataclass(frozen=True)
class ExecutionMode:
    """How a steered iteration is executed; every mode computes the same steering.

    ``reference`` is the published approach (explicit joint attention with materialised logits in
    every layer, eager fp32 classifier, a host-side stop test every iteration, full forward); it is
    kept to validate and benchmark ``fast`` (fused token-selected capture, forward cut after the
    last captured layer, stop tests on the device, compiled classifier on CUDA).
    """

    name: str
    capture_cls: type
    stop_after_last_layer: bool
    sync_each_iteration: bool
    compile_classifier: bool | None       # None: compile where it pays (CUDA)


MODES = {
    "reference": ExecutionMode("reference", ExplicitAttentionReference, stop_after_last_layer=False,
                               sync_each_iteration=True, compile_classifier=False),
    "fast": ExecutionMode("fast", AttentionCapture, stop_after_last_layer=True,
                          sync_each_iteration=False, compile_classifier=None),
}


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
    launch-bound (tens of ms for ~5 M parameters). Returns a callable with the module's signature.
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


class SteeringObjective:
    """log p(target relation) for a denoiser's latent, read by a relation classifier from its maps.

    ``mode`` ("fast", "reference" or an :class:`ExecutionMode`) picks how maps are captured and
    the classifier is run; ``capture_backend`` is how the fast mode computes maps: "sdpa" (fused
    SDPA, selector as value) or "native" (the ``l2s::selected_text_softmax`` op); same maps.
    The classifier is frozen, put in eval mode and moved to the denoiser's device.
    """

    def __init__(self, denoiser: torch.nn.Module, classifier: RelationClassifier,
                 mode: str | ExecutionMode = "fast", capture_backend: str = "sdpa") -> None:
        self.mode = execution_mode(mode)
        self.denoiser = denoiser
        self.classifier = classifier.eval().requires_grad_(False)
        self.capture_backend = capture_backend
        self._classify = None                 # the (possibly compiled) classifier call
        self.classifier.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def new_capture(self) -> AttentionCapture:
        """A capture for this mode, to install with ``with``; it runs only the layers it needs."""
        # A classifier trained on a subset of layers names them; capture (and run) only those.
        layout = self.classifier.config.layer_layout
        layers = [entry[0] for entry in layout] if layout else None
        if self.mode.capture_cls is AttentionCapture:
            return AttentionCapture(self.denoiser, layers=layers, backend=self.capture_backend)
        return self.mode.capture_cls(self.denoiser, layers=layers)

    def map_channels(self) -> int:
        """Maps per object the denoiser provides (captured layers x heads)."""
        with self.new_capture() as capture:
            return capture.channels()

    def classify(self, maps: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Classifier logits (float32), compiled on first use where the mode asks for it."""
        if self._classify is None:
            compile_it = self.mode.compile_classifier
            if compile_it is None:
                compile_it = self.device.type == "cuda"
            if compile_it:
                dtype = torch.bfloat16 if self.device.type == "cuda" else None
                self._classify = compile_classifier(self.classifier, self.device, dtype)
            else:
                self._classify = self.classifier
        return self._classify(maps, steps).float()

    @contextlib.contextmanager
    def at_step(self, plan: SteeringPlan, step: int, run_denoiser: Callable[[torch.Tensor], object],
                text_len: int, latent_hw: tuple[int, int]) -> Iterator[LogProbFn]:
        """Yields ``log_prob(z, relation)`` -> (B,) for denoising ``step``, capture installed.

        ``run_denoiser(z)`` runs the step's denoiser forward (conditional pass) on ``z``;
        ``text_len`` and ``latent_hw`` are its text length and latent token grid. The capture is
        on the denoiser only inside this block, so plain steps run the stock model.
        """
        step_index = step_index_for(step, tuple(self.classifier.config.timesteps))
        with self.new_capture() as capture:
            def log_prob(z: torch.Tensor, relation: int) -> torch.Tensor:
                maps = self.record_maps(capture, plan, z, run_denoiser, text_len, latent_hw)
                return self.log_prob_of_maps(maps, plan, relation, step_index, z.device)

            yield log_prob

    def record_maps(self, capture: AttentionCapture, plan: SteeringPlan, z: torch.Tensor,
                    run_denoiser: Callable[[torch.Tensor], object], text_len: int,
                    latent_hw: tuple[int, int]) -> CapturedMaps:
        """One differentiable denoiser forward on ``z``, recording the plan's token-group maps."""
        with capture.recording(plan.token_indices, text_len, latent_hw,
                               stop_after_last=self.mode.stop_after_last_layer) as maps, \
                differentiable_sdpa(z.device):
            run_denoiser(z)
        return maps

    def log_prob_of_maps(self, maps: CapturedMaps, plan: SteeringPlan, relation: int,
                         step_index: int, device: torch.device) -> torch.Tensor:
        """Per-image log p(target class of ``relation``) from recorded maps."""
        subject, obj = plan.pairs[relation]
        x = maps.classifier_input(subject, obj, map_size=self.classifier.config.map_size)
        steps = torch.full((x.shape[0],), step_index, dtype=torch.long, device=x.device)
        with differentiable_sdpa(device):      # the classifier's attention is differentiated too
            logits = self.classify(x, steps)
        return torch.log_softmax(logits, dim=-1)[:, plan.class_indices[relation]]
