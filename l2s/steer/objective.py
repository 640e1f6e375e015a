"""The steering objective: per-image log p(target relation) of a latent at one denoising step.

One evaluation reads along the data path: run the denoiser on ``z`` with map capture installed
-> the subject's and object's token-group maps -> the classifier's input -> classify ->
``log_softmax`` at the relation's class. :func:`~l2s.steer.refine.refine_latents` differentiates
it with respect to ``z``. Everything index-like a prompt needs (the capture's token-group
selectors, the classifier's step tensor) is made once per prompt on the denoiser's device
(:class:`PreparedPlan`), so an iteration copies nothing from the host.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from l2s.capture import AttentionCapture, CapturedMaps, ExplicitAttentionReference, MapSpec, map_spec
from l2s.classifier import RelationClassifier, step_index_for
from l2s.errors import UsageError

from .compiled import CompiledBlocks
from .plan import SteeringPlan
from .refine import LogProbFn

DEFAULT_CAPTURE_BACKEND = "sdpa"  # CPU: a steering iteration takes half the time of "native" (bench group "capture")


@dataclass(frozen=True)
class ExecutionMode:
    """How a steered iteration is executed; every mode computes the same steering.

    ``reference`` is the published approach (explicit joint attention with materialised logits in
    every layer, eager fp32 classifier, full forward); it is kept to validate and benchmark
    ``fast`` (fused token-selected capture, forward cut after the last captured layer, compiled
    classifier on CUDA) and ``fast+compiled`` (``fast`` with the transformer blocks of steered
    passes under regional ``torch.compile``, FLUX only; the first pass at each shape compiles).
    """

    name: str
    capture_cls: type
    stop_after_last_layer: bool
    compile_classifier: bool | None       # None: compile where it pays (CUDA)
    compile_blocks: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None       # "reduce-overhead": CUDA graphs (static shapes, CUDA only)


MODES = {
    "reference": ExecutionMode("reference", ExplicitAttentionReference, stop_after_last_layer=False,
                               compile_classifier=False),
    "fast": ExecutionMode("fast", AttentionCapture, stop_after_last_layer=True, compile_classifier=None),
    "fast+compiled": ExecutionMode("fast+compiled", AttentionCapture, stop_after_last_layer=True,
                                   compile_classifier=None, compile_blocks=True),
    "fast+cudagraphs": ExecutionMode("fast+cudagraphs", AttentionCapture, stop_after_last_layer=True,
                                     compile_classifier=None, compile_blocks=True,
                                     compile_mode="reduce-overhead"),
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


@dataclass
class PreparedPlan:
    """A plan's device-side indices, made once per prompt: the recording spec (whose selectors
    are built on first use and then reused) and the classifier's step tensors."""

    plan: SteeringPlan
    spec: MapSpec
    device: torch.device
    _steps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def steps(self, step_index: int, batch: int) -> torch.Tensor:
        key = (step_index, batch)
        if key not in self._steps:
            self._steps[key] = torch.full((batch,), step_index, dtype=torch.long, device=self.device)
        return self._steps[key]


class SteeringObjective:
    """log p(target relation) for a denoiser's latent, read by a relation classifier from its maps.

    ``mode`` (a name of :data:`MODES` or an :class:`ExecutionMode`) picks how maps are captured
    and the classifier is run; ``capture_backend`` is how the fast modes compute maps: "sdpa"
    (fused SDPA, selector as value) or "native" (the ``l2s::selected_text_softmax`` op); same maps.
    The classifier is frozen, put in eval mode and moved to the denoiser's device.
    """

    def __init__(self, denoiser: torch.nn.Module, classifier: RelationClassifier,
                 mode: str | ExecutionMode = "fast", capture_backend: str = DEFAULT_CAPTURE_BACKEND) -> None:
        self.mode = execution_mode(mode)
        self.denoiser = denoiser
        self.classifier = classifier.eval().requires_grad_(False)
        self.capture_backend = capture_backend
        self._classify = None                 # the (possibly compiled) classifier call
        self._prepared: PreparedPlan | None = None
        self.classifier.to(self.device)
        self.compiled_blocks = None
        if self.mode.compile_blocks:
            if self.mode.compile_mode == "reduce-overhead" and self.device.type != "cuda":
                raise UsageError(f"mode {self.mode.name!r} replays CUDA graphs and needs the model on CUDA")
            self.compiled_blocks = CompiledBlocks(denoiser, self.mode.compile_backend, self.mode.compile_mode)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def compile_seconds(self) -> float:
        """Cold compile time so far (first forward + backward at each new shape); 0 if nothing compiles."""
        return self.compiled_blocks.cold_seconds if self.compiled_blocks is not None else 0.0

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

    def prepare(self, plan: SteeringPlan, text_len: int, latent_hw: tuple[int, int]) -> PreparedPlan:
        """The plan's :class:`PreparedPlan`, made on its first steered step and kept for the others."""
        cached = self._prepared
        if (cached is None or cached.plan is not plan or cached.spec.text_len != text_len
                or cached.spec.latent_hw != tuple(latent_hw) or cached.device != self.device):
            self._prepared = PreparedPlan(plan, map_spec(plan.token_indices, text_len, latent_hw), self.device)
        return self._prepared

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
        ``text_len`` and ``latent_hw`` are its text length and latent token grid. The capture (and
        in ``fast+compiled`` the compiled blocks) is on the denoiser only inside this block, so
        plain steps run the stock model.
        """
        prepared = self.prepare(plan, text_len, latent_hw)
        step_index = step_index_for(step, tuple(self.classifier.config.timesteps))
        compiled = self.compiled_blocks.active() if self.compiled_blocks else contextlib.nullcontext()
        with self.new_capture() as capture, compiled:
            def log_prob(z: torch.Tensor, relation: int) -> torch.Tensor:
                if self.compiled_blocks is not None:
                    self.compiled_blocks.time_if_cold(z)
                maps = self._forward(capture, prepared.spec, z, run_denoiser)
                return self._log_prob(maps, prepared, relation, step_index)

            yield log_prob

    def _forward(self, capture: AttentionCapture, spec: MapSpec, z: torch.Tensor,
                 run_denoiser: Callable[[torch.Tensor], object]) -> CapturedMaps:
        with capture.recording_spec(spec, stop_after_last=self.mode.stop_after_last_layer) as maps, \
                differentiable_sdpa(z.device):
            run_denoiser(z)
        return maps

    def _log_prob(self, maps: CapturedMaps, prepared: PreparedPlan, relation: int,
                  step_index: int) -> torch.Tensor:
        plan = prepared.plan
        subject, obj = plan.pairs[relation]
        x = maps.classifier_input(subject, obj, map_size=self.classifier.config.map_size)
        steps = prepared.steps(step_index, x.shape[0])
        with differentiable_sdpa(x.device):      # the classifier's attention is differentiated too
            logits = self.classify(x, steps)
        return torch.log_softmax(logits, dim=-1)[:, plan.class_indices[relation]]
