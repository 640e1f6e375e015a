"""FLUX with relation steering as a diffusers pipeline: ``FluxPipeline``'s call, steered."""
# No `from __future__ import annotations`: diffusers reads __init__'s annotations as classes.
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.utils import BaseOutput
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    T5EncoderModel,
    T5TokenizerFast,
)

from l2s.classifier import RelationClassifier
from l2s.errors import UsageError
from l2s.steer import DEFAULT_CAPTURE_BACKEND, Schedule, SteeringPlan

from ..arguments import grid_mismatch_warning
from ..families import flux_family, pixels_per_token
from ..flux import FLUX_FAMILIES, _FluxConditioning, check_text_window
from ..flux_sampling import linear_sigmas, set_flux_timesteps
from ..guards import one_call_at_a_time, refuse_inference_mode
from ..loading import model_steering_defaults
from .plans import PromptSteering, SteeredRows, plan_prompts
from .steering import RelationSteeringMixin, Rows, callback_inputs, checked_prompts, steering_callback


@dataclass
class FluxRelationSteeringOutput(BaseOutput):
    """``images`` as ``FluxPipelineOutput`` has them; ``steering``: one
    :class:`~l2s.pipelines.native.plans.PromptSteering` per prompt (plan, schedule, diagnostics;
    ``.to_json()`` for a report)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    steering: list[PromptSteering] | None = None


def _t5_texts(prompts: list[str], prompt_2, steer: bool) -> list[str]:
    """What the T5 encoder reads: ``prompt_2`` where given, else the prompts. Steering plans over the
    prompt's T5 tokens, so a steered call whose ``prompt_2`` says otherwise is refused."""
    if prompt_2 is None:
        return prompts
    texts = [prompt_2] * len(prompts) if isinstance(prompt_2, str) else list(prompt_2)
    if steer and texts != prompts:
        raise UsageError("prompt_2 (the T5 encoder's text, whose token maps steering reads) must be the prompt "
                         "itself when steering: leave it out, or pass steer=False")
    return texts


class FluxRelationSteeringPipeline(RelationSteeringMixin, FluxPipeline):
    r"""``FluxPipeline`` that steers the spatial relations of the prompt with a relation classifier.

    Build it on a loaded pipeline (same modules, no copies)::

        pipe = FluxRelationSteeringPipeline.from_pipe(flux_pipe, classifier=RelationClassifier.load(path))
        image = pipe("a dog to the left of a cat", generator=torch.Generator().manual_seed(0)).images[0]

    The call takes every ``FluxPipeline`` argument and returns its images plus ``steering`` (what
    was steered and how the target probability moved). Steering arguments: ``relations``
    (``[("dog", "left of", "cat")]``, or one such list per prompt: skips the parser), ``steer``
    (False: the stock pipeline's output), ``steering_schedule`` (a preset name or a
    :class:`~l2s.steer.Schedule`; default the pipeline's ``steering_schedule``, "reference").

    During a call the transformer and the classifier are frozen (``requires_grad_(False)``) and the
    classifier is in eval mode; the transformer's attention processors are swapped for capturing
    ones during steered forwards only. All of it is restored when the call returns or raises.
    """

    _optional_components = [*FluxPipeline._optional_components, "classifier"]
    _exclude_from_cpu_offload = [*FluxPipeline._exclude_from_cpu_offload, "classifier"]
    denoiser_name = "transformer"
    steering_families = FLUX_FAMILIES

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, vae: AutoencoderKL,
                 text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, text_encoder_2: T5EncoderModel,
                 tokenizer_2: T5TokenizerFast, transformer: FluxTransformer2DModel,
                 image_encoder: CLIPVisionModelWithProjection = None,
                 feature_extractor: CLIPImageProcessor = None, classifier: RelationClassifier = None,
                 steering_schedule: str = "reference", steering_step_size: float = None,
                 steering_mode: str = "fast", capture_backend: str = DEFAULT_CAPTURE_BACKEND,
                 steering_family: str = None):
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self._register_steering(classifier, steering_schedule, steering_step_size, steering_mode,
                                capture_backend, steering_family)

    def steering_family(self) -> str:
        """Whose published schedule applies: configured, else the model's own (a shapes model's), else
        dev (guidance embedding) or schnell."""
        if self.config.steering_family:
            return self.config.steering_family
        if own := model_steering_defaults(self).get("family"):
            return own
        return flux_family(self.transformer)

    @one_call_at_a_time
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = None, prompt_2: str | list[str] | None = None,
                 negative_prompt: str | list[str] = None, negative_prompt_2: str | list[str] | None = None,
                 true_cfg_scale: float | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, sigmas: list[float] | None = None,
                 guidance_scale: float = 3.5, num_images_per_prompt: int = 1, generator=None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 joint_attention_kwargs: dict[str, Any] | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",),
                 max_sequence_length: int = 512, *, relations=None, steer: bool = True,
                 steering_schedule: Schedule | str | None = None, **kwargs):
        """``FluxPipeline.__call__`` with steering (see the class); extra keywords go to it as they are."""
        prompts = self._readable_prompts(prompt, prompt_2, steer, kwargs.get("prompt_embeds"))
        height, width, num_inference_steps, true_cfg_scale, negative_prompt = self._sampling_defaults(
            height, width, num_inference_steps, true_cfg_scale,
            negative_prompt, kwargs.get("negative_prompt_embeds") is not None)
        schedule = self.steering_schedule_for(steering_schedule, num_inference_steps) if steer else None
        steerings = plan_prompts(prompts, relations, num_images_per_prompt,
                                 lambda parsed: self._plan(parsed, max_sequence_length), schedule)
        self._announce(steerings, self._grid_warning(steerings, height, width))
        text, negative = self._embeddings(prompts, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale,
                                          num_images_per_prompt, max_sequence_length, joint_attention_kwargs, kwargs)
        with self.borrowed_modules():
            steer_at = self._steerer(text, steerings, height, width, guidance_scale, joint_attention_kwargs)
            steered_steps = self._ready_to_steer(steerings)
            if 0 in steered_steps:
                latents = self._steered_start(latents, text, height, width, num_inference_steps, sigmas,
                                              generator, steer_at)
            output = super().__call__(
                prompt_embeds=text[0], pooled_prompt_embeds=text[1],
                negative_prompt_embeds=negative[0], negative_pooled_prompt_embeds=negative[1],
                true_cfg_scale=true_cfg_scale, height=height, width=width,
                num_inference_steps=num_inference_steps, sigmas=sigmas, guidance_scale=guidance_scale,
                num_images_per_prompt=1, generator=generator, latents=latents, output_type=output_type,
                return_dict=True, joint_attention_kwargs=joint_attention_kwargs,
                callback_on_step_end=steering_callback(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                                       steer_at, steered_steps - {0}),
                callback_on_step_end_tensor_inputs=callback_inputs(callback_on_step_end,
                                                                   callback_on_step_end_tensor_inputs),
                max_sequence_length=max_sequence_length, **kwargs)
        if not return_dict:
            return output.images, steerings
        return FluxRelationSteeringOutput(images=output.images, steering=steerings)

    def _readable_prompts(self, prompt, prompt_2, steer, prompt_embeds) -> list[str]:
        """The call's prompts as a list, refused (``UsageError``) where steering could not read their
        words: no prompt, embeddings in its place, a T5 text that is not the prompt, or one longer than a
        fixed T5 window."""
        if prompt is None or prompt_embeds is not None:
            raise UsageError("steering reads the prompt's words: pass prompt= and no prompt_embeds "
                             "(embeddings alone cannot be steered; use FluxPipeline for that)")
        prompts = checked_prompts(prompt, steer)
        for each in _t5_texts(prompts, prompt_2, steer):
            check_text_window(self, each)
        return prompts

    def _sampling_defaults(self, height, width, steps, true_cfg_scale, negative_prompt, negative_embeds: bool):
        """What the caller left out: the model's own sampling (a shapes model's size, steps and
        guidance against the empty caption, as ``wrap_pipeline`` gives them), else the stock call's."""
        own = model_steering_defaults(self)
        side = own.get("size") or self.default_sample_size * self.vae_scale_factor
        if true_cfg_scale is None:
            true_cfg_scale = own.get("true_cfg_scale", 1.0)
            if true_cfg_scale > 1 and negative_prompt is None and not negative_embeds:
                negative_prompt = ""
        steps = own.get("steps", 28) if steps is None else steps
        return height or side, width or side, steps, true_cfg_scale, negative_prompt

    def _embeddings(self, prompts: list[str], prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale: float,
                    per_prompt: int, max_sequence_length: int, joint_attention_kwargs, kwargs: dict):
        """The prompts' (embeddings, pooled, text ids) and the negative's (embeddings, pooled): the
        negative prompt encoded when guidance against it is on, else the caller's negative embeddings
        (taken out of ``kwargs``, which the stock call then gets without them)."""
        lora_scale = (joint_attention_kwargs or {}).get("scale")
        text = self.encode_prompt(prompt=prompts, prompt_2=prompt_2, device=self._execution_device,
                                  num_images_per_prompt=per_prompt,
                                  max_sequence_length=max_sequence_length, lora_scale=lora_scale)
        negative = kwargs.pop("negative_prompt_embeds", None), kwargs.pop("negative_pooled_prompt_embeds", None)
        if true_cfg_scale > 1 and negative_prompt is not None:
            negative = self._encode_negative(negative_prompt, negative_prompt_2, len(prompts),
                                             per_prompt, max_sequence_length, lora_scale)
        return text, negative

    # ---- steering -------------------------------------------------------------------------
    def _ready_to_steer(self, steerings) -> set[int]:
        """The steps any prompt is steered at; where there are some, the call is checked able to steer
        (not under inference mode, a classifier that fits the model) before any work."""
        steered_steps = {s for st in steerings if st.schedule for s in st.schedule.steered_steps}
        if steered_steps:
            refuse_inference_mode()
            self.objective()      # a classifier that does not fit fails before any work
        return steered_steps

    def _grid_warning(self, steerings, height: int, width: int) -> str | None:
        """The maps' grid at this size against the classifier's (None when nothing is steered)."""
        if not any(steering.steered for steering in steerings):
            return None
        multiple = pixels_per_token(self)
        return grid_mismatch_warning((int(height) // multiple, int(width) // multiple),
                                     self.steering_classifier().config, height, width)

    def _plan(self, parsed, max_sequence_length: int) -> SteeringPlan:
        """The plan over the T5 tokens, which FLUX's maps are read over."""
        return SteeringPlan.from_parsed(parsed, self.tokenizer_2, max_sequence_length,
                                        self.steering_classifier().config.class_names)

    def _encode_negative(self, negative_prompt, negative_prompt_2, count: int, per_prompt: int,
                         max_sequence_length: int, lora_scale):
        """The negative prompt's (embeddings, pooled), one per prompt (a single string serves all)."""
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * count
        if len(negative_prompt) != count:
            raise UsageError(f"negative_prompt has {len(negative_prompt)} entries for {count} prompts: give one "
                             "string for all, or one per prompt")
        embeds, pooled, _ = self.encode_prompt(prompt=negative_prompt, prompt_2=negative_prompt_2,
                                               device=self._execution_device,
                                               num_images_per_prompt=per_prompt,
                                               max_sequence_length=max_sequence_length, lora_scale=lora_scale)
        return embeds, pooled

    def _steerer(self, text, steerings, height: int, width: int, guidance_scale: float, joint_kwargs):
        """``steer(latents, step)``: refine the rows of every prompt steered at ``step``, together."""
        steered = SteeredRows.of(steerings)
        prompt_embeds, pooled, text_ids = text
        grid = (int(height) // pixels_per_token(self), int(width) // pixels_per_token(self))
        image_ids = self._prepare_latent_image_ids(prompt_embeds.shape[0], grid[0], grid[1],
                                                   self._execution_device, prompt_embeds.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([prompt_embeds.shape[0]], guidance_scale, device=self._execution_device,
                                  dtype=torch.float32)

        def steer(latents: torch.Tensor, step: int) -> torch.Tensor:
            t = self.scheduler.timesteps[step]
            denoiser = self.steering_denoiser

            def inputs(rows: Rows, z: torch.Tensor) -> dict:
                conditioning = _FluxConditioning((prompt_embeds[rows], pooled[rows]), None, text_ids, image_ids,
                                                 None if guidance is None else guidance[rows])
                return conditioning.inputs(z, t.expand(z.shape[0]).to(z.dtype))

            def run_rows(rows: Rows, z: torch.Tensor):
                with denoiser.cache_context("cond"):
                    return denoiser(**inputs(rows, z), joint_attention_kwargs=joint_kwargs, return_dict=False)[0]

            # The steered forward takes the stock inputs only: extra attention kwargs keep the stock one.
            return self.steer_rows(latents, step, steered, run_rows, prompt_embeds.shape[1], grid,
                                   None if joint_kwargs else inputs)

        return steer

    def _steered_start(self, latents, text, height: int, width: int, steps: int, sigmas, generator, steer_at):
        """The initial latents (drawn from ``generator`` as the stock call would), steered at step 0."""
        batch = text[0].shape[0]
        latents, _ = self.prepare_latents(batch, self.transformer.config.in_channels // 4, height, width,
                                          text[0].dtype, self._execution_device, generator, latents)
        sigmas = linear_sigmas(steps) if sigmas is None else sigmas
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        set_flux_timesteps(self.scheduler, steps, latents.shape[1], self._execution_device, sigmas)
        return steer_at(latents, 0)
