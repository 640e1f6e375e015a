"""Stable Diffusion with relation steering as a diffusers pipeline: ``StableDiffusionPipeline``'s call, steered."""
# No `from __future__ import annotations`: diffusers reads __init__'s annotations as classes.
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    retrieve_timesteps,
)
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from l2s.classifier import RelationClassifier
from l2s.errors import UsageError
from l2s.steer import DEFAULT_CAPTURE_BACKEND, Schedule, SteeringPlan

from ..guards import one_call_at_a_time, refuse_inference_mode
from .plans import PromptSteering, SteeredRows, plan_prompts
from .steering import RelationSteeringMixin, Rows, callback_inputs, checked_prompts, steering_callback


@dataclass
class StableDiffusionRelationSteeringOutput(StableDiffusionPipelineOutput):
    """``StableDiffusionPipelineOutput`` plus ``steering``: one
    :class:`~l2s.pipelines.native.plans.PromptSteering` per prompt."""

    steering: list[PromptSteering] | None = None


class StableDiffusionRelationSteeringPipeline(RelationSteeringMixin, StableDiffusionPipeline):
    r"""``StableDiffusionPipeline`` that steers the spatial relations of the prompt with a relation classifier.

    Same construction, arguments, output and guarantees as
    :class:`~l2s.pipelines.native.FluxRelationSteeringPipeline` (``from_pipe(pipe, classifier=...)``,
    ``relations=``, ``steer=``, ``steering_schedule=``), except that ``return_dict=False`` gives
    ``(images, nsfw_content_detected, steering)`` as stock SD does; the maps are read over the CLIP tokens
    from the UNet's cross-attention layers, on the conditional pass only (no CFG batch), as published.
    During a call the UNet and the classifier are frozen and restored afterwards.
    """

    _optional_components = [*StableDiffusionPipeline._optional_components, "classifier"]
    _exclude_from_cpu_offload = [*StableDiffusionPipeline._exclude_from_cpu_offload, "classifier"]
    denoiser_name = "unet"
    steering_families = ("sd14", "sd21")

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers,
                 safety_checker: StableDiffusionSafetyChecker, feature_extractor: CLIPImageProcessor,
                 image_encoder: CLIPVisionModelWithProjection = None, requires_safety_checker: bool = True,
                 classifier: RelationClassifier = None, steering_schedule: str = "reference",
                 steering_step_size: float = None, steering_mode: str = "fast",
                 capture_backend: str = DEFAULT_CAPTURE_BACKEND, steering_family: str = None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._register_steering(classifier, steering_schedule, steering_step_size, steering_mode,
                                capture_backend, steering_family)

    def steering_family(self) -> str:
        if self.config.steering_family:
            return self.config.steering_family
        return "sd21" if self.unet.config.cross_attention_dim == 1024 else "sd14"

    @one_call_at_a_time
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",), *, relations=None,
                 steer: bool = True, steering_schedule: Schedule | str | None = None, **kwargs):
        """``StableDiffusionPipeline.__call__`` with steering; extra keywords go to it as they are."""
        if prompt is None:
            raise UsageError("steering reads the prompt's words: pass prompt= (prompt_embeds alone cannot "
                             "be steered; use StableDiffusionPipeline for that)")
        prompts = checked_prompts(prompt, steer)
        if isinstance(negative_prompt, str) and not isinstance(prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)      # one negative prompt for all
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        schedule = self.steering_schedule_for(steering_schedule, num_inference_steps) if steer else None
        steerings = plan_prompts(prompts, relations, num_images_per_prompt, self._plan, schedule)
        self._announce(steerings)
        steered_steps = {s for st in steerings if st.schedule for s in st.schedule.steered_steps}
        with self.borrowed_modules():
            steer_at = None
            if steered_steps:
                refuse_inference_mode()
                self.objective()      # a classifier that does not fit fails before any work
                cond, _ = self.encode_prompt(prompts, self._execution_device, num_images_per_prompt, False,
                                             lora_scale=(cross_attention_kwargs or {}).get("scale"),
                                             clip_skip=kwargs.get("clip_skip"))
                steer_at = self._steerer(cond, steerings, guidance_scale, cross_attention_kwargs)
            if 0 in steered_steps:
                latents = self._steered_start(latents, cond, height, width, num_inference_steps, timesteps,
                                              sigmas, generator, steer_at)
            output = super().__call__(
                prompt=prompt, height=height, width=width,
                num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas,
                guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator, latents=latents,
                output_type=output_type, return_dict=True, cross_attention_kwargs=cross_attention_kwargs,
                callback_on_step_end=steering_callback(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                                       steer_at, steered_steps - {0}),
                callback_on_step_end_tensor_inputs=callback_inputs(callback_on_step_end,
                                                                   callback_on_step_end_tensor_inputs),
                **kwargs)
        if not return_dict:
            return output.images, output.nsfw_content_detected, steerings
        return StableDiffusionRelationSteeringOutput(images=output.images,
                                                     nsfw_content_detected=output.nsfw_content_detected,
                                                     steering=steerings)

    def _plan(self, parsed) -> SteeringPlan:
        """The plan over the CLIP tokens, which the UNet's cross-attention reads."""
        return SteeringPlan.from_parsed(parsed, self.tokenizer, self.tokenizer.model_max_length,
                                        self.steering_classifier().config.class_names)

    def _steerer(self, cond: torch.Tensor, steerings, guidance_scale: float, cross_attention_kwargs):
        """``steer(latents, step)``: refine the rows of every prompt steered at ``step``, together."""
        steered = SteeredRows.of(steerings)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(guidance_scale - 1).repeat(cond.shape[0])
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim).to(cond.device)

        def steer(latents: torch.Tensor, step: int) -> torch.Tensor:
            t, unet = self.scheduler.timesteps[step], self.steering_denoiser

            def run_rows(rows: Rows, z: torch.Tensor):
                extra = None if timestep_cond is None else timestep_cond[rows].to(z.dtype)
                return unet(self.scheduler.scale_model_input(z, t), t, encoder_hidden_states=cond[rows],
                            timestep_cond=extra, cross_attention_kwargs=cross_attention_kwargs,
                            return_dict=False)[0]

            return self.steer_rows(latents, step, steered, run_rows, cond.shape[1], tuple(latents.shape[-2:]))

        return steer

    def _steered_start(self, latents, cond, height: int, width: int, steps: int, timesteps, sigmas, generator,
                       steer_at):
        """The initial latents (drawn from ``generator`` as the stock call would), steered at step 0,
        in the unscaled form the stock call takes."""
        # The timesteps first: a sigma-scaled scheduler's init_noise_sigma is that of the schedule it holds.
        retrieve_timesteps(self.scheduler, steps, self._execution_device, timesteps, sigmas)
        latents = self.prepare_latents(cond.shape[0], self.unet.config.in_channels, height, width, cond.dtype,
                                       self._execution_device, generator, latents)
        return steer_at(latents, 0) / self.scheduler.init_noise_sigma
