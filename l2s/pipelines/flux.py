"""FLUX.1-dev / schnell: maps from every double and single block over the T5 tokens."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from l2s.engines import (
    ENGINE_KINDS,
    CudaGraphEngine,
    EngineError,
    OnnxRuntimeEngine,
    TensorRTEngine,
    check_engine_request,
    make_plain_step_engine,
    weight_fingerprint,
)
from l2s.errors import UsageError
from l2s.steer import DEFAULT_CAPTURE_BACKEND, DenoiserCall

from .base import SteeringPipeline, seeded_generators
from .families import PUBLISHED_SAMPLING, flux_family, pixels_per_token
from .flux_sampling import decode_to_pil, linear_sigmas, set_flux_timesteps
from .loading import steering_family


log = logging.getLogger(__name__)

# Engines that hold the weights as they were built (an export, a plan, captured addresses); eager and
# compiled engines read the live parameters.
FROZEN_ENGINES = (OnnxRuntimeEngine, TensorRTEngine, CudaGraphEngine)
ENGINES_KEPT = 8   # plain-step engines a pipeline keeps, by input shapes (each may hold a plan or graph)

FLUX_FAMILIES = ("flux-dev", "flux-schnell")   # whose published rule (schedule, steps) applies


def _check_flux_options(family, steps, size, true_cfg_scale) -> None:
    """Refused at wrap time, before any image: a typo would otherwise surface mid-call or never."""
    if family is not None and family not in FLUX_FAMILIES:
        raise UsageError(f"family must be one of {', '.join(FLUX_FAMILIES)}, got {family!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise UsageError(f"steps must be a positive whole number of denoising steps, got {steps!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise UsageError(f"size must be a positive number of pixels, got {size!r}")
    if not (isinstance(true_cfg_scale, (int, float)) and math.isfinite(true_cfg_scale) and true_cfg_scale > 0):
        raise UsageError(f"true_cfg_scale must be a positive number (1 = no guidance), got {true_cfg_scale!r}")


def check_text_window(pipe, prompt: str) -> None:
    """A T5 encoder with a fixed window (the shapes model's ``fit_window``) refuses a longer prompt
    only when it runs, after the CLIP encoder: the same error, before any model runs."""
    encoder = getattr(pipe, "text_encoder_2", None)
    fit = getattr(encoder, "fit_window", None)
    if fit is not None:
        ids = pipe.tokenizer_2([prompt], return_tensors="pt", verbose=False).input_ids
        fit(ids, fill=encoder.config.pad_token_id)


def refuse_reference_engine(mode_name: str, kind: str) -> None:
    """An engine for the plain steps of a ``reference`` run, refused (``UsageError``): it runs eagerly."""
    if mode_name == "reference" and kind not in ("auto", "eager"):
        raise UsageError(f"mode 'reference' runs every step eagerly, as the published code does: engine "
                         f"{kind!r} needs one of the fast modes")


@dataclass
class _FluxConditioning:
    """Everything but the latent and timestep that a FLUX transformer call takes."""

    text: tuple[torch.Tensor, torch.Tensor]                 # (prompt embeddings, pooled)
    negative: tuple[torch.Tensor, torch.Tensor] | None      # the same for true CFG's negative prompt
    text_ids: torch.Tensor
    image_ids: torch.Tensor
    guidance: torch.Tensor | None

    def inputs(self, z: torch.Tensor, timestep: torch.Tensor, text=None) -> dict:
        text = self.text if text is None else text
        return dict(hidden_states=z, timestep=timestep / 1000, guidance=self.guidance,
                    pooled_projections=text[1], encoder_hidden_states=text[0],
                    txt_ids=self.text_ids, img_ids=self.image_ids)


@steering_family
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
                 size: int | None = None, capture_backend: str = DEFAULT_CAPTURE_BACKEND):
        _check_flux_options(family, steps, size, true_cfg_scale)
        super().__init__(pipe, classifier, schedule, mode, step_size, capture_backend)
        self._default_size = size
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length
        self.engine_kind = engine
        # Whose published settings (schedule rule, steps) apply: dev has a guidance embedding,
        # schnell not. A FLUX-architecture model that is neither (the shapes world's undistilled
        # 12-step model) names its family and default step count.
        self.family = family or flux_family(pipe.transformer)
        self._engine_weights: str | None = None   # fingerprint of the weights the frozen engines were built from
        self._default_steps = steps
        self._explicit_family = family is not None

    @classmethod
    def accepts(cls, pipe) -> bool:
        return hasattr(pipe, "transformer") and hasattr(pipe, "tokenizer_2")

    def _check_mode(self, mode) -> None:
        refuse_reference_engine(mode.name, self.engine_kind)

    @property
    def engine_kind(self) -> str:
        """What runs plain steps (``l2s.engines.ENGINE_KINDS``); reference mode runs eager."""
        return "eager" if self.mode.name == "reference" else self._engine_kind

    @engine_kind.setter
    def engine_kind(self, kind: str) -> None:
        if kind not in ENGINE_KINDS:
            raise UsageError(f"engine must be one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
        refuse_reference_engine(self.mode.name, kind)
        self._engine_kind = kind

    @classmethod
    def wrap(cls, pipe, classifier, schedule=None, mode: str = "fast", step_size: float | None = None,
             capture_backend: str = DEFAULT_CAPTURE_BACKEND, **options) -> "FluxSteeringPipeline":
        return cls(pipe, classifier, schedule, mode, step_size=step_size, capture_backend=capture_backend,
                   **options)

    @property
    def label(self) -> str:
        if self._explicit_family:  # a FLUX-architecture model that is neither dev nor schnell
            return f"flux ({self.family} rule)"   # the bar's total shows the steps of each call
        return self.family

    def map_tokenizer(self):
        return self.pipe.tokenizer_2, self.max_sequence_length

    def plan(self, prompt: str, relations: list | None = None):
        check_text_window(self.pipe, prompt)    # every prompt of a call is planned before any encoding
        return super().plan(prompt, relations)

    @property
    def uses_true_cfg(self) -> bool:
        return self.true_cfg_scale != 1.0

    def sampling_options(self) -> dict:
        if not self.uses_true_cfg:
            return {"true_cfg_scale": 1.0}
        return {"true_cfg_scale": self.true_cfg_scale, "negative_prompt": self.negative_prompt}

    def plain_engine(self, example_inputs: dict):
        """The engine for plain steps at these input shapes, built once and cached.

        "auto" runs eager unless a TensorRT plan for these shapes is already cached on disk; any other
        kind (``l2s.engines.ENGINE_KINDS``) is built, announced with its expected cost, and cached.
        ``engine.reason`` says which and why (also in the report). The :data:`ENGINES_KEPT` last used
        are kept: a service meeting many batch sizes and resolutions would otherwise keep every one.
        """
        key = (self.engine_kind, *((k, tuple(v.shape), v.dtype) for k, v in example_inputs.items()
                                   if isinstance(v, torch.Tensor)))
        if key not in self._engines:
            started = time.perf_counter()
            engine = make_plain_step_engine(self.pipe.transformer, example_inputs, kind=self.engine_kind)
            if engine.kind != "eager":    # eager builds nothing
                self.engine_build_seconds += time.perf_counter() - started
            if isinstance(engine, FROZEN_ENGINES) and self._engine_weights is None:
                self._engine_weights = weight_fingerprint(self.pipe.transformer)
            self._engines[key] = engine
            self._forget_old_engines()
        self._engines.move_to_end(key)
        self._last_engine = self._engines[key]
        return self._last_engine

    def _forget_old_engines(self) -> None:
        while len(self._engines) > ENGINES_KEPT:
            (_, *shapes), engine = self._engines.popitem(last=False)
            if engine.kind != "eager":
                latents = dict((name, shape) for name, shape, _ in shapes).get("hidden_states")
                log.info("the %s plain-step engine for latents %s is dropped (the %d last used are kept)",
                         engine.kind, list(latents or ()), ENGINES_KEPT)

    def _drop_stale_engines(self) -> None:
        """Engines built from other weights than the transformer holds now (a LoRA fused since,
        weights loaded or changed in place) are built again: an export or plan keeps the old ones."""
        if self._engine_weights is not None and weight_fingerprint(self.pipe.transformer) != self._engine_weights:
            log.info("the transformer's weights changed since its plain-step engines were built: building them again")
            self._engines.clear()
            self._engine_weights = None

    def default_steps(self) -> int:
        if self._default_steps is not None:
            return self._default_steps
        return PUBLISHED_SAMPLING[self.family].steps

    def default_size(self) -> int:
        # A model that names its own size (a shapes model's training size, whatever its token grid)
        # keeps it: deriving it from the classifier would sample another resolution when the
        # classifier was made for another token grid.
        if self._default_size is not None:
            return self._default_size
        # Else the classifier's grid, else the published one (PUBLISHED_SAMPLING), scaled to this VAE.
        grid = self.classifier.config.orig_map_size or PUBLISHED_SAMPLING[self.family].token_grid
        return grid * pixels_per_token(self.pipe)

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt, plan, *, steps, height, width, guidance_scale, seed, num_images,
                 schedule, diagnostics, latents, progress):
        height, width = self._image_size(height, width)
        self._check_engine()
        self._drop_stale_engines()
        guidance_scale = self._guidance_scale(guidance_scale)
        text, negative, text_ids = self._encode(prompt, num_images)
        latents, image_ids = self.pipe.prepare_latents(
            num_images, self.pipe.transformer.config.in_channels // 4, height, width,
            text[0].dtype, self.device, seeded_generators(seed), latents)
        if schedule is not None:
            self.check_classifier()
        timesteps = self._timesteps(steps, latents.shape[1])
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full([num_images], guidance_scale, device=self.device, dtype=torch.float32)
        conditioning = _FluxConditioning(text, negative, text_ids, image_ids, guidance)
        multiple = pixels_per_token(self.pipe)
        latent_hw = (height // multiple, width // multiple)
        latents = self._denoise(latents, timesteps, conditioning, plan, schedule, latent_hw,
                                diagnostics, progress)
        return decode_to_pil(self.pipe, latents, height, width)

    def check_arguments(self, prompt: str, *, height: int | None = None, width: int | None = None, **call) -> None:
        super().check_arguments(prompt, height=height, width=width, **call)
        self._image_size(height, width)
        self._check_engine()

    def _check_engine(self) -> None:
        """An engine that cannot be built here (device, dtype, packages, cache folder), refused
        before step 0's steering runs rather than at the first plain step."""
        try:
            check_engine_request(self.engine_kind, self.device, self.pipe.transformer.dtype)
        except EngineError as error:
            raise UsageError(str(error)) from None

    def resolved_sampling(self, height: int | None, width: int | None, guidance_scale: float | None) -> dict:
        height, width = self._image_size(height, width)
        embedded = self.pipe.transformer.config.guidance_embeds   # without the embedding no guidance is read
        return {"height": height, "width": width,
                "guidance_scale": self._guidance_scale(guidance_scale) if embedded else None}

    def _guidance_scale(self, guidance_scale: float | None) -> float:
        if guidance_scale is None:
            return PUBLISHED_SAMPLING[self.family].guidance
        return guidance_scale

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        height = height or self.default_size()
        width = width or self.default_size()
        multiple = pixels_per_token(self.pipe)
        if height % multiple or width % multiple:
            raise UsageError(f"height and width must be multiples of {multiple} for this model")
        return height, width

    def _encode(self, prompt: str | list[str], num_images: int):
        """(prompt embeddings, pooled), the negative prompt's (None without true CFG), text ids;
        ``num_images`` of one prompt, or one image per prompt of a list."""
        prompt_embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device,
            num_images_per_prompt=num_images if isinstance(prompt, str) else 1,
            max_sequence_length=self.max_sequence_length)
        negative = None
        if self.uses_true_cfg:
            negative_embeds, negative_pooled, _ = self.pipe.encode_prompt(
                prompt=self.negative_prompt, prompt_2=None, device=self.device,
                num_images_per_prompt=num_images, max_sequence_length=self.max_sequence_length)
            negative = (negative_embeds, negative_pooled)
        return (prompt_embeds, pooled), negative, text_ids

    def _timesteps(self, steps: int, image_seq_len: int) -> torch.Tensor:
        """The scheduler's timesteps, shifted for the image size as diffusers' FluxPipeline does."""
        timesteps = set_flux_timesteps(self.pipe.scheduler, steps, image_seq_len, self.device, linear_sigmas(steps))
        self.pipe.scheduler.set_begin_index(0)
        return timesteps

    def _denoise(self, latents, timesteps, conditioning: _FluxConditioning, plan, schedule,
                 latent_hw, diagnostics, progress) -> torch.Tensor:
        """The denoising loop: on steered steps refine the latent first, then a plain step."""
        transformer, text_len = self.pipe.transformer, conditioning.text[0].shape[1]

        def denoiser(timestep: torch.Tensor) -> DenoiserCall:
            def run(z: torch.Tensor) -> torch.Tensor:
                with transformer.cache_context("cond"):
                    return transformer(**conditioning.inputs(z, timestep), return_dict=False)[0]

            return DenoiserCall(run, lambda z: conditioning.inputs(z, timestep))

        with self._progress(len(timesteps), progress) as bar:
            for i, t in enumerate(timesteps):
                timestep = t.expand(latents.shape[0]).to(latents.dtype)
                latents = self._steer_if_scheduled(latents, i, plan, schedule, denoiser(timestep), text_len,
                                                   latent_hw, diagnostics, bar)
                noise_pred = self._plain_prediction(latents, timestep, conditioning)
                latents = self.pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update()
        return latents

    def _plain_prediction(self, latents, timestep, conditioning: _FluxConditioning) -> torch.Tensor:
        """The plain forward on the engine (TensorRT / compiled / eager, see l2s.engines), with
        true CFG against the negative prompt when it is on."""
        transformer = self.pipe.transformer
        step_inputs = conditioning.inputs(latents, timestep)
        with transformer.cache_context("cond"):
            noise_pred = self.plain_engine(step_inputs)(**step_inputs)
        if conditioning.negative is not None:
            negative_inputs = conditioning.inputs(latents, timestep, conditioning.negative)
            with transformer.cache_context("uncond"):
                negative_pred = self.plain_engine(negative_inputs)(**negative_inputs)
            noise_pred = negative_pred + self.true_cfg_scale * (noise_pred - negative_pred)
        return noise_pred
