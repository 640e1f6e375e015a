"""Steered generation on diffusers pipelines (FLUX.1-dev/schnell, Stable Diffusion 1.4/2.1).

The data path reads top-down in :meth:`SteeringPipeline.__call__`:
parse the prompt -> map objects to tokens -> denoise, and on steered steps
capture maps -> classify -> refine the latent (``l2s.steer``) -> plain step -> decode.

The denoising loops follow diffusers' own ``FluxPipeline`` / ``StableDiffusionPipeline`` loops
(same components, scheduler calls and latent packing), with the steering step inserted; the
pipeline's callback runs under ``no_grad``, so steering needs its own loop.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from l2s.capture import AttentionCapture, ExplicitAttentionReference
from l2s.classifier import RelationClassifier, step_index_for
from l2s.errors import ClassifierMismatchError, ModelLoadError, UsageError
from l2s.parsing import ParsedPrompt, parse_prompt
from l2s.relations import class_index
from l2s.steer import (
    Schedule,
    SteeringDiagnostics,
    preset_steps,
    refine_latents,
    schedule_preset,
    validate_step_size,
)
from l2s.tokens import check_prompt_length, token_groups


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


def compile_classifier(classifier: RelationClassifier, device: torch.device,
                       dtype: torch.dtype | None = None):
    """The classifier's forward (and its backward to the maps) compiled for static shapes.

    On CUDA it runs in bf16 under CUDA graphs (``reduce-overhead``): the eager fp32 classifier is
    launch-bound (tens of ms for ~5 M parameters).  Returns a callable with the module's signature.
    """
    if dtype is not None:
        classifier = copy.deepcopy(classifier).to(dtype)     # leave the caller's fp32 model alone
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(classifier, dynamic=False, mode=mode)


@dataclass
class SteeringPlan:
    """What will be steered: relations, the token groups of their objects, and class indices."""

    parsed: ParsedPrompt
    phrases: list[str] = field(default_factory=list)
    token_indices: list[tuple[int, ...]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)       # (subject group, object group) per relation
    class_indices: list[int] = field(default_factory=list)

    @property
    def steered(self) -> bool:
        return bool(self.pairs)

    def to_json(self) -> dict:
        return {
            "relations": [t.to_dict() for t in self.parsed.triplets],
            "non_directional": [{"subject": n.subject, "relation": n.relation, "object": n.object}
                                for n in self.parsed.non_directional],
            "token_indices": {p: list(ix) for p, ix in zip(self.phrases, self.token_indices)},
            "class_indices": self.class_indices,
            "steered": self.steered,
            "note": self.parsed.describe(),
        }


@dataclass
class SteeringResult:
    images: list  # PIL images
    plan: SteeringPlan
    schedule: Schedule | None
    diagnostics: SteeringDiagnostics
    timings: dict[str, float]
    engine: dict | None = None        # the plain-step engine used: {"name", "reason"}
    sampling: dict = field(default_factory=dict)  # model-specific sampling options in effect

    def report(self) -> dict:
        per_step: dict[int, list[dict]] = {}
        for r in self.diagnostics.records:
            per_step.setdefault(r.step, []).append(
                {"iteration": r.iteration, "relation": r.relation, "loss": r.loss,
                 "target_probability": r.target_probability, "updated": r.updated,
                 "non_finite": r.non_finite})
        return {
            **self.plan.to_json(),
            "schedule": self.schedule.to_json() if self.schedule else None,
            "steps": {str(k): v for k, v in per_step.items()},
            "non_finite_events": len(self.diagnostics.non_finite_events()),
            "plain_step_engine": self.engine,
            "sampling": self.sampling,
            "timings_s": self.timings,
        }


def _differentiable_sdpa(device: torch.device):
    """cuDNN's SDPA backward failed for FLUX on our H100: differentiate through flash/efficient only."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _checked_step_size(step_size: float) -> float:
    try:
        return validate_step_size(step_size)
    except ValueError as e:
        raise UsageError(str(e)) from None


class SteeringPipeline:
    """Wraps a diffusers pipeline and a relation classifier; subclasses supply the model loop."""

    family: str
    denoiser_attr: str

    def __init__(self, pipe, classifier: RelationClassifier, schedule: Schedule | None = None,
                 mode: str = "fast", step_size: float | None = None):
        if mode not in MODES:
            raise UsageError(f"unknown execution mode {mode!r}; expected one of {', '.join(MODES)}")
        self.pipe = pipe
        self.classifier = classifier.eval().requires_grad_(False)
        self.schedule = schedule
        # Step size of the named schedules (presets); None: the family's published one.
        self.step_size = None if step_size is None else _checked_step_size(step_size)
        self.mode = MODES[mode]
        # How the fast mode computes maps: "sdpa" (fused SDPA, selector as value) or "native"
        # (the l2s::selected_text_softmax op); same maps, see l2s.capture.AttentionCapture.
        self.capture_backend = "sdpa"
        self._classify = None                 # the (possibly compiled) classifier call
        # Steering differentiates w.r.t. the latent only: freeze every weight.
        for name in ("transformer", "unet", "text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        self.classifier.to(self.device)
        self._engines: dict = {}              # plain-step engines by input shapes
        self._last_engine = None

    def _new_capture(self) -> AttentionCapture:
        # A classifier trained on a subset of layers names them; capture (and run) only those.
        layout = self.classifier.config.layer_layout
        layers = [entry[0] for entry in layout] if layout else None
        if self.mode.capture_cls is AttentionCapture:
            return AttentionCapture(self.denoiser, layers=layers, backend=self.capture_backend)
        return self.mode.capture_cls(self.denoiser, layers=layers)

    def map_channels(self) -> int:
        """Maps per object this model provides (captured layers x heads)."""
        with self._new_capture() as capture:
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

    # ---- construction -------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_attr)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @classmethod
    def from_pretrained(cls, model_path: str | Path, classifier: RelationClassifier | str | Path,
                        torch_dtype: torch.dtype | None = None, device: str | None = None,
                        schedule: Schedule | None = None, mode: str = "fast",
                        step_size: float | None = None) -> "SteeringPipeline":
        """Load a diffusers pipeline from a local directory (never a hub) and wrap it."""
        pipe = load_diffusers_pipeline(model_path, torch_dtype=torch_dtype)
        if device:
            pipe.to(device)
        if not isinstance(classifier, RelationClassifier):
            classifier = RelationClassifier.load(classifier)
        return wrap_pipeline(pipe, classifier, schedule, mode, step_size=step_size)

    # ---- shared data path ---------------------------------------------------------------
    def plan(self, prompt: str) -> SteeringPlan:
        """Parse the prompt, map each object phrase to tokens, and check the classifier fits."""
        parsed = parse_prompt(prompt)
        tokenizer, max_length = self.map_tokenizer()
        check_prompt_length(tokenizer, prompt, max_length)
        plan = SteeringPlan(parsed=parsed)
        if not parsed.steerable:
            return plan
        names = self.classifier.config.class_names
        phrases: list[str] = []
        for t in parsed.triplets:
            for phrase in (t.subject, t.object):
                if phrase not in phrases:
                    phrases.append(phrase)
        groups = token_groups(tokenizer, prompt, phrases, max_length)
        plan.phrases = phrases
        plan.token_indices = [g.indices for g in groups]
        plan.pairs = [(phrases.index(t.subject), phrases.index(t.object)) for t in parsed.triplets]
        plan.class_indices = [class_index(t.relation, names) for t in parsed.triplets]
        return plan

    def check_classifier(self) -> None:
        cfg = self.classifier.config
        channels = self.map_channels()
        if cfg.channels != channels:
            raise ClassifierMismatchError(
                f"classifier expects {cfg.channels} maps per object but this "
                f"{self.family} model provides {channels} (layers x heads); use a classifier trained "
                f"for this model")

    def steer_step(self, latents: torch.Tensor, step: int, plan: SteeringPlan, schedule: Schedule,
                   run_denoiser, text_len: int, latent_hw: tuple[int, int],
                   diagnostics: SteeringDiagnostics) -> torch.Tensor:
        """Refine ``latents`` at a steered ``step``: capture -> classify -> gradient step(s).

        The capture processors are on the model only for the duration of this step, so plain
        steps run the stock model (or an engine built from it).
        """
        with self._new_capture() as capture:
            log_prob = self.log_prob_fn(capture, plan, step, run_denoiser, text_len, latent_hw)
            return refine_latents(latents, step, log_prob, schedule, len(plan.pairs), diagnostics,
                                  sync_each_iteration=self.mode.sync_each_iteration)

    def log_prob_fn(self, capture: AttentionCapture, plan: SteeringPlan, step: int, run_denoiser,
                    text_len: int, latent_hw: tuple[int, int]):
        """Per-image log p(target relation) at ``step`` for latent ``z`` and relation ``r``."""
        cfg = self.classifier.config
        step_index = step_index_for(step, tuple(cfg.timesteps))

        def log_prob(z: torch.Tensor, r: int) -> torch.Tensor:
            with capture.recording(plan.token_indices, text_len, latent_hw,
                                         stop_after_last=self.mode.stop_after_last_layer) as maps, \
                    _differentiable_sdpa(z.device):
                run_denoiser(z)
            subject, obj = plan.pairs[r]
            x = maps.classifier_input(subject, obj, map_size=cfg.map_size)
            steps = torch.full((x.shape[0],), step_index, dtype=torch.long, device=x.device)
            with _differentiable_sdpa(z.device):      # the classifier's attention is differentiated too
                logits = self.classify(x, steps)
            return torch.log_softmax(logits, dim=-1)[:, plan.class_indices[r]]

        return log_prob

    def __call__(self, prompt: str, *, num_inference_steps: int | None = None,
                 height: int | None = None, width: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0, num_images: int = 1,
                 steer: bool = True, schedule: Schedule | str | None = None,
                 latents: torch.Tensor | None = None, progress: bool = True) -> SteeringResult:
        """Generate ``num_images`` images of ``prompt``; steered when it has a directional relation.

        ``schedule`` is a :class:`Schedule` or a preset name (``l2s.steer.PRESETS``; default the
        published "reference"); a preset also picks the number of steps unless given, and takes
        the pipeline's ``step_size`` when one was set (a :class:`Schedule` keeps its own).
        ``latents`` replaces the seeded initial noise (in the pipeline's own latent layout).
        """
        t0 = time.perf_counter()
        plan = self.plan(prompt)
        schedule = schedule or self.schedule or "reference"
        if isinstance(schedule, str):
            try:
                steps = num_inference_steps or preset_steps(schedule, self.family, self.default_steps())
                schedule = schedule_preset(schedule, self.family, steps, self.step_size)
            except ValueError as e:
                raise UsageError(str(e)) from None
        steps = num_inference_steps or schedule.num_steps
        if schedule.num_steps != steps:
            raise UsageError(f"schedule {schedule.name!r} covers {schedule.num_steps} steps, "
                             f"generation uses {steps}")
        do_steer = steer and plan.steered
        diagnostics = SteeringDiagnostics()
        images = self.generate(prompt, plan, steps=steps, height=height, width=width,
                               guidance_scale=guidance_scale, seed=seed, num_images=num_images,
                               schedule=schedule if do_steer else None, diagnostics=diagnostics,
                               latents=latents, progress=progress)
        timings = {"total": time.perf_counter() - t0}
        engine = self._last_engine
        return SteeringResult(images=images, plan=plan, schedule=schedule if do_steer else None,
                              diagnostics=diagnostics, timings=timings,
                              engine={"name": engine.name, "reason": engine.reason} if engine else None,
                              sampling=self.sampling_options())

    def _progress(self, total: int, enabled: bool):
        return tqdm(total=total, disable=not enabled, desc=f"l2s {self.label}", leave=False)

    @property
    def label(self) -> str:
        """How progress bars name this model."""
        return self.family

    # ---- per-model parts ------------------------------------------------------------------
    def sampling_options(self) -> dict:
        """Sampling options of this wrapper beyond the call's arguments (recorded in reports)."""
        return {}

    def map_tokenizer(self):
        raise NotImplementedError

    def default_steps(self) -> int:
        raise NotImplementedError

    def generate(self, prompt, plan, **kwargs):
        raise NotImplementedError


class FluxSteeringPipeline(SteeringPipeline):
    """FLUX.1-dev / schnell: maps from every double and single block over the T5 tokens.

    ``true_cfg_scale`` > 1 turns on classifier-free guidance against ``negative_prompt`` on the
    plain forwards, as diffusers' ``FluxPipeline(true_cfg_scale=...)`` does (off by default: the
    published models use none). Steering reads the conditional pass only, so the classifier's
    maps are the same either way.
    """

    denoiser_attr = "transformer"

    def __init__(self, pipe, classifier, schedule=None, mode: str = "fast",
                 max_sequence_length: int = 512, engine: str = "auto", *,
                 family: str | None = None, steps: int | None = None,
                 true_cfg_scale: float = 1.0, negative_prompt: str = "", step_size: float | None = None,
                 size: int | None = None):
        super().__init__(pipe, classifier, schedule, mode, step_size)
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise UsageError(f"size must be a positive number of pixels, got {size!r}")
        self._default_size = size
        if not (isinstance(true_cfg_scale, (int, float)) and math.isfinite(true_cfg_scale) and true_cfg_scale > 0):
            raise UsageError(f"true_cfg_scale must be a positive number (1 = no guidance), got {true_cfg_scale!r}")
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length
        self.engine_kind = "eager" if mode == "reference" else engine
        # Whose published settings (schedule rule, steps) apply: dev has a guidance embedding,
        # schnell not. A FLUX-architecture model that is neither (the shapes world's undistilled
        # 12-step model) names its family and default step count.
        self.family = family or ("flux-dev" if pipe.transformer.config.guidance_embeds else "flux-schnell")
        self._default_steps = steps
        self._explicit_family = family is not None

    @property
    def label(self) -> str:
        if self._explicit_family:  # a FLUX-architecture model that is neither dev nor schnell
            return f"flux ({self.family} rule, {self.default_steps()} steps)"
        return self.family

    def map_tokenizer(self):
        return self.pipe.tokenizer_2, self.max_sequence_length

    @property
    def uses_true_cfg(self) -> bool:
        return self.true_cfg_scale != 1.0

    def sampling_options(self) -> dict:
        if not self.uses_true_cfg:
            return {"true_cfg_scale": 1.0}
        return {"true_cfg_scale": self.true_cfg_scale, "negative_prompt": self.negative_prompt}

    def plain_engine(self, example_inputs: dict):
        """The engine for plain steps at these input shapes, built once and cached.

        "auto" picks TensorRT where installed (CUDA), else a compiled, CUDA-graphed transformer,
        else eager on CPU; ``engine.reason`` says which and why (also in the report).
        """
        from l2s.engines import make_plain_step_engine

        key = tuple((k, tuple(v.shape), v.dtype) for k, v in example_inputs.items()
                    if isinstance(v, torch.Tensor))
        if key not in self._engines:
            self._engines[key] = make_plain_step_engine(self.pipe.transformer, example_inputs,
                                                        kind=self.engine_kind)
        self._last_engine = self._engines[key]
        return self._last_engine

    def default_steps(self) -> int:
        return self._default_steps or (50 if self.family == "flux-dev" else 4)

    def default_size(self) -> int:
        # A model that names its own size (a shapes model's training size, whatever its token grid)
        # keeps it: deriving it from the classifier would sample another resolution when the
        # classifier was made for another token grid.
        if self._default_size is not None:
            return self._default_size
        # Published: latent token grid 32 (dev, 512 px) or 16 (schnell, 256 px), scaled to this VAE.
        grid = self.classifier.config.orig_map_size or (32 if self.family == "flux-dev" else 16)
        return grid * self.pipe.vae_scale_factor * 2

    @torch.no_grad()
    def generate(self, prompt, plan, *, steps, height, width, guidance_scale, seed, num_images,
                 schedule, diagnostics, latents, progress):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe, device = self.pipe, self.device
        height = height or self.default_size()
        width = width or self.default_size()
        multiple = pipe.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise UsageError(f"height and width must be multiples of {multiple} for this model")
        if guidance_scale is None:
            guidance_scale = 3.5 if self.family == "flux-dev" else 0.0
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=num_images,
            max_sequence_length=self.max_sequence_length)
        negative = None
        if self.uses_true_cfg:
            negative_embeds, negative_pooled, _ = pipe.encode_prompt(
                prompt=self.negative_prompt, prompt_2=None, device=device, num_images_per_prompt=num_images,
                max_sequence_length=self.max_sequence_length)
            negative = (negative_embeds, negative_pooled)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents, image_ids = pipe.prepare_latents(
            num_images, pipe.transformer.config.in_channels // 4, height, width,
            prompt_embeds.dtype, device, generator, latents)
        latent_hw = (height // multiple, width // multiple)
        if schedule is not None:
            self.check_classifier()

        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(latents.shape[1], pipe.scheduler.config.get("base_image_seq_len", 256),
                             pipe.scheduler.config.get("max_image_seq_len", 4096),
                             pipe.scheduler.config.get("base_shift", 0.5),
                             pipe.scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
        pipe.scheduler.set_begin_index(0)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([num_images], guidance_scale, device=device, dtype=torch.float32)

        def inputs(z: torch.Tensor, timestep: torch.Tensor, text=(prompt_embeds, pooled)) -> dict:
            return dict(hidden_states=z, timestep=timestep / 1000, guidance=guidance,
                        pooled_projections=text[1], encoder_hidden_states=text[0],
                        txt_ids=text_ids, img_ids=image_ids)

        def denoise(z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            with pipe.transformer.cache_context("cond"):
                return pipe.transformer(**inputs(z, timestep), return_dict=False)[0]

        with self._progress(len(timesteps), progress) as bar:
            for i, t in enumerate(timesteps):
                timestep = t.expand(latents.shape[0]).to(latents.dtype)
                if schedule is not None and schedule.is_steered(i):
                    latents = self.steer_step(latents, i, plan, schedule,
                                              lambda z: denoise(z, timestep),
                                              prompt_embeds.shape[1], latent_hw, diagnostics)
                    last = diagnostics.for_step(i)
                    if last:
                        bar.set_postfix(p=f"{min(last[-1].target_probability):.3f}")
                # Plain forward: on the engine (TensorRT / compiled / eager, see l2s.engines).
                step_inputs = inputs(latents, timestep)
                with pipe.transformer.cache_context("cond"):
                    noise_pred = self.plain_engine(step_inputs)(**step_inputs)
                if negative is not None:
                    negative_inputs = inputs(latents, timestep, negative)
                    with pipe.transformer.cache_context("uncond"):
                        negative_pred = self.plain_engine(negative_inputs)(**negative_inputs)
                    noise_pred = negative_pred + self.true_cfg_scale * (noise_pred - negative_pred)
                latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update()

        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


class SDSteeringPipeline(SteeringPipeline):
    """Stable Diffusion 1.4 / 2.1: maps from the UNet's cross-attention layers over CLIP tokens."""

    denoiser_attr = "unet"

    def __init__(self, pipe, classifier, schedule=None, mode: str = "fast", step_size: float | None = None):
        super().__init__(pipe, classifier, schedule, mode, step_size)
        self.family = "sd21" if pipe.unet.config.cross_attention_dim == 1024 else "sd14"

    def map_tokenizer(self):
        return self.pipe.tokenizer, self.pipe.tokenizer.model_max_length

    def default_steps(self) -> int:
        return 50

    @torch.no_grad()
    def generate(self, prompt, plan, *, steps, height, width, guidance_scale, seed, num_images,
                 schedule, diagnostics, latents, progress):
        pipe, device = self.pipe, self.device
        height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if guidance_scale is None:
            guidance_scale = 7.5
        do_cfg = guidance_scale > 1.0
        cond, uncond = pipe.encode_prompt(prompt, device, num_images, do_cfg)
        pipe.scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = pipe.prepare_latents(num_images, pipe.unet.config.in_channels, height, width,
                                       cond.dtype, device, generator, latents)
        latent_hw = tuple(latents.shape[-2:])
        if schedule is not None:
            self.check_classifier()

        def unet(z, t, embeds):
            return pipe.unet(pipe.scheduler.scale_model_input(z, t), t,
                             encoder_hidden_states=embeds, return_dict=False)[0]

        with self._progress(len(pipe.scheduler.timesteps), progress) as bar:
            for i, t in enumerate(pipe.scheduler.timesteps):
                if schedule is not None and schedule.is_steered(i):
                    # The steering forward is conditional-only (no CFG batch), as published.
                    latents = self.steer_step(latents, i, plan, schedule,
                                              lambda z: unet(z, t, cond), cond.shape[1],
                                              latent_hw, diagnostics)
                    last = diagnostics.for_step(i)
                    if last:
                        bar.set_postfix(p=f"{min(last[-1].target_probability):.3f}")
                if do_cfg:
                    noise = unet(torch.cat([latents] * 2), t, torch.cat([uncond, cond]))
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                else:
                    noise = unet(latents, t, cond)
                latents = pipe.scheduler.step(noise, t, latents, return_dict=False)[0]
                bar.update()

        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil",
                                                do_denormalize=[True] * image.shape[0])


def wrap_pipeline(pipe, classifier: RelationClassifier, schedule: Schedule | None = None,
                  mode: str = "fast", step_size: float | None = None, **flux_options) -> SteeringPipeline:
    """Wrap an existing diffusers ``FluxPipeline`` or ``StableDiffusionPipeline``.

    ``mode`` picks the implementation ("fast" or the published "reference"); both steer alike.
    ``step_size`` replaces the published step size of the named schedules (default: published).
    ``flux_options`` go to :class:`FluxSteeringPipeline` (``family``, ``steps``, ``engine``, ...).
    """
    if hasattr(pipe, "transformer") and hasattr(pipe, "tokenizer_2"):
        return FluxSteeringPipeline(pipe, classifier, schedule, mode, step_size=step_size, **flux_options)
    if flux_options:
        raise TypeError(f"options {sorted(flux_options)} apply to FLUX pipelines only")
    if hasattr(pipe, "unet") and hasattr(pipe, "tokenizer"):
        return SDSteeringPipeline(pipe, classifier, schedule, mode, step_size)
    raise TypeError(f"cannot steer a {type(pipe).__name__}: expected a FLUX or Stable Diffusion pipeline")


# Folders saved before the package layout name a component's old module; alias it to the new one.
_MOVED_COMPONENT_MODULES = {"l2s.shapes_model": "l2s.shapes.model"}


def _import_l2s_components(model_index: dict, path: Path) -> None:
    """Import the l2s modules a pipeline folder names (the shapes world's pixel VAE, ...):
    diffusers finds custom component classes only in modules that are already imported."""
    import importlib
    import sys

    for value in model_index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("l2s."):
            name = value[0]
            try:
                module = importlib.import_module(_MOVED_COMPONENT_MODULES.get(name, name))
            except ImportError as error:
                raise ModelLoadError(f"{path} needs {name}, which cannot be imported: {error}") from None
            sys.modules.setdefault(name, module)


def load_diffusers_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None):
    """Load a FLUX or SD pipeline from a local diffusers directory; never contacts a hub."""
    import diffusers

    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"no diffusers pipeline at {path} (model_index.json missing)")
    import json
    try:
        model_index = json.loads(index.read_text())
        class_name = model_index["_class_name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"corrupt model_index.json in {path}: {e}") from None
    _import_l2s_components(model_index, path)
    kinds = {"FluxPipeline": diffusers.FluxPipeline,
             "StableDiffusionPipeline": diffusers.StableDiffusionPipeline}
    if class_name not in kinds:
        raise ModelLoadError(f"{path} holds a {class_name}; l2s steers {', '.join(kinds)}")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if class_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return kinds[class_name].from_pretrained(str(path), **kwargs)
    except Exception as e:  # diffusers raises many kinds on damaged folders
        raise ModelLoadError(f"could not load the pipeline at {path}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
