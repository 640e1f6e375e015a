"""The steering objective: per-image log p(target relation) of a latent at one denoising step.

One evaluation reads along the data path: run the denoiser on ``z`` with map capture installed
-> the subject's and object's token-group maps -> the classifier's input -> classify ->
``log_softmax`` at the relation's class. :func:`~l2s.steer.refine.refine_latents` differentiates
it with respect to ``z``. On FLUX the fast modes run l2s's steered forward instead of the stock
model with capture processors (:mod:`.steered`). Everything index-like a prompt needs (token-group
selectors, each relation's group pair and class, the classifier's step tensor) is made once per
prompt on the denoiser's device (:class:`PreparedPlan`), so an iteration copies nothing from the host.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from l2s.capture import AttentionCapture, CapturedMaps, MapSpec, map_spec
from l2s.classifier import RelationClassifier, step_index_for
from l2s.errors import UsageError

from .modes import (
    DEFAULT_CAPTURE_BACKEND,
    ExecutionMode,
    compile_classifier,
    differentiable_sdpa,
    execution_mode,
)
from .batch import BatchPlan
from .plan import SteeringPlan
from .refine import LogProbFn
from .steered import SteeredEvaluation


@dataclass
class DenoiserCall:
    """The conditional denoiser forward of one denoising step, as a function of the latent ``z``.

    ``run(z)`` runs the model (with the capture's processors when they are installed).
    ``inputs(z)``, where given, returns a FLUX transformer's keyword arguments for ``z``: with it
    the fast modes run :class:`~l2s.capture.FluxSteeredForward` on them instead.
    """

    run: Callable[[torch.Tensor], object]
    inputs: Callable[[torch.Tensor], dict] | None = None

    def __call__(self, z: torch.Tensor) -> object:
        return self.run(z)


@dataclass
class PreparedPlan:
    """A plan's device-side indices, made once per prompt (or batch of prompts): the recording spec
    (whose selectors are built on first use and then reused), each iteration's per-image group
    pairs and classes, and the classifier's step tensors."""

    plan: SteeringPlan | BatchPlan
    spec: MapSpec
    device: torch.device
    _steps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    _rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def steps(self, step_index: int, batch: int) -> torch.Tensor:
        key = (step_index, batch)
        if key not in self._steps:
            self._steps[key] = torch.full((batch,), step_index, dtype=torch.long, device=self.device)
        return self._steps[key]

    def relation(self, relation: int | Sequence[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(group pairs (B, 2), classes (B,)) as long device tensors: ``relation`` is the index
        every image reads, or one index per image (a :class:`BatchPlan`)."""
        key = (relation if isinstance(relation, int) else tuple(relation), batch)
        if key not in self._rows:
            if isinstance(self.plan, BatchPlan):
                relations = (relation,) * batch if isinstance(relation, int) else relation
                pairs, classes = BatchPlan.of(self.plan, batch).rows(relations)
            else:
                pairs = [self.plan.pairs[relation]] * batch
                classes = [self.plan.class_indices[relation]] * batch
            self._rows[key] = (torch.tensor(pairs, dtype=torch.long, device=self.device),
                               torch.tensor(classes, dtype=torch.long, device=self.device))
        return self._rows[key]


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
        self._steered: SteeredEvaluation | None = None
        if self.mode.compile_steering:
            from diffusers import FluxTransformer2DModel

            if not isinstance(denoiser, FluxTransformer2DModel):
                raise UsageError(f"mode {self.mode.name!r} compiles FLUX's steered forward; "
                                 f"{type(denoiser).__name__} has none: use mode='fast'")
            if self.mode.needs_cuda and self.device.type != "cuda":
                raise UsageError(f"mode {self.mode.name!r} replays CUDA graphs and needs the model on CUDA")

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def compile_seconds(self) -> float:
        """Cold compile time so far (first forward + backward at each new shape); 0 if nothing compiles."""
        return self._steered.compile_seconds if self._steered is not None else 0.0

    def _layers(self) -> list[str] | None:
        # A classifier trained on a subset of layers names them; capture (and run) only those.
        layout = self.classifier.config.layer_layout
        return [entry[0] for entry in layout] if layout else None

    @property
    def backend_in_use(self) -> str | None:
        """The capture backend this mode computes its maps with; None where the mode captures them
        its own way (reference: explicit attention, as the published code), whatever was set."""
        return self.capture_backend if self.mode.capture_cls is AttentionCapture else None

    def new_capture(self) -> AttentionCapture:
        """A capture for this mode, to install with ``with``; it runs only the layers it needs."""
        if self.mode.capture_cls is AttentionCapture:
            return AttentionCapture(self.denoiser, layers=self._layers(), backend=self.capture_backend)
        return self.mode.capture_cls(self.denoiser, layers=self._layers())

    def map_channels(self) -> int:
        """Maps per object the denoiser provides (captured layers x heads); installs no capture."""
        return self.mode.capture_cls.channels_of(self.denoiser, self._layers())

    def prepare(self, plan: SteeringPlan | BatchPlan, text_len: int, latent_hw: tuple[int, int]) -> PreparedPlan:
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
    def at_step(self, plan: SteeringPlan | BatchPlan, step: int, run_denoiser: Callable[[torch.Tensor], object],
                text_len: int, latent_hw: tuple[int, int]) -> Iterator[LogProbFn]:
        """Yields ``log_prob(z, relation)`` -> (B,) for denoising ``step``; ``relation`` is one index
        for every image, or one per image when ``plan`` is a :class:`BatchPlan`.

        ``run_denoiser(z)`` runs the step's denoiser forward (conditional pass) on ``z`` (a
        :class:`DenoiserCall` with ``inputs`` lets the fast modes run FLUX's steered forward);
        ``text_len`` and ``latent_hw`` are its text length and latent token grid. Capture
        processors are on the denoiser only inside this block, so plain steps run the stock model.
        """
        self._follow_denoiser()
        prepared = self.prepare(plan, text_len, latent_hw)
        step_index = step_index_for(step, tuple(self.classifier.config.timesteps))
        steered = self._steered_evaluation(getattr(run_denoiser, "inputs", None))
        if steered is not None:
            yield steered.log_prob_fn(prepared, step_index, run_denoiser.inputs)
            return
        with self.new_capture() as capture:
            def log_prob(z: torch.Tensor, relation: int | Sequence[int]) -> torch.Tensor:
                maps = self._forward(capture, prepared.spec, z, run_denoiser)
                return self._log_prob(maps, prepared, relation, step_index)

            yield log_prob

    def _follow_denoiser(self) -> None:
        """Move the classifier to where the denoiser is now (a pipeline may be moved after wrapping);
        the classifier calls made for the old device are dropped."""
        device = self.device
        if next(self.classifier.parameters()).device != device:
            self.classifier.to(device)
            self._classify, self._steered = None, None

    def _steered_evaluation(self, inputs) -> SteeredEvaluation | None:
        """The FLUX steered-forward evaluation where this mode runs one, else None (stock + capture)."""
        if not self.mode.steered_forward:
            return None
        reason = SteeredEvaluation.unsupported(self.denoiser, inputs)
        if reason is not None:
            if self.mode.compile_steering:
                raise UsageError(f"mode {self.mode.name!r} needs FLUX's steered forward, but {reason}; "
                                 "use mode='fast'")
            return None
        cached = self._steered
        if cached is None or cached.backend != self.capture_backend:
            classify = self._graph_classifier() if self.mode.compile_steering else self.classify
            self._steered = SteeredEvaluation(self.denoiser, self._layers(), self.capture_backend, classify,
                                              self.classifier.config.map_size, self.mode)
        return self._steered

    def _graph_classifier(self) -> torch.nn.Module:
        """The classifier inside a compiled iteration: in bf16 where ``classify`` would compile it
        (CUDA), else the fp32 module."""
        if self.device.type == "cuda" and self.mode.compile_classifier is not False:
            return copy.deepcopy(self.classifier).to(torch.bfloat16)   # leave the caller's model alone
        return self.classifier

    def _forward(self, capture: AttentionCapture, spec: MapSpec, z: torch.Tensor,
                 run_denoiser: Callable[[torch.Tensor], object]) -> CapturedMaps:
        with capture.recording_spec(spec, stop_after_last=self.mode.stop_after_last_layer) as maps, \
                differentiable_sdpa(z.device):
            run_denoiser(z)
        return maps

    def _log_prob(self, maps: CapturedMaps, prepared: PreparedPlan, relation: int | Sequence[int],
                  step_index: int) -> torch.Tensor:
        batch = maps.layers[0].maps.shape[0] if maps.layers else 0
        if isinstance(relation, int) and not isinstance(prepared.plan, BatchPlan):
            subject, obj = prepared.plan.pairs[relation]   # one prompt: the published reads, unchanged
            x = maps.classifier_input(subject, obj, map_size=self.classifier.config.map_size)
            class_index = prepared.plan.class_indices[relation]
            with differentiable_sdpa(x.device):      # the classifier's attention is differentiated too
                logits = self.classify(x, prepared.steps(step_index, batch))
            return torch.log_softmax(logits, dim=-1)[:, class_index]
        pair, classes = prepared.relation(relation, batch)
        x = maps.pair_input(pair, map_size=self.classifier.config.map_size)
        with differentiable_sdpa(x.device):
            logits = self.classify(x, prepared.steps(step_index, batch))
        return torch.log_softmax(logits, dim=-1).gather(1, classes.view(-1, 1)).squeeze(1)
