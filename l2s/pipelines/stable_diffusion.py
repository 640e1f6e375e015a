"""Stable Diffusion 1.4 / 2.1: maps from the UNet's cross-attention layers over CLIP tokens."""
from __future__ import annotations

import torch

from l2s.steer import DEFAULT_CAPTURE_BACKEND

from .base import SteeringPipeline, seeded_generators
from .families import PUBLISHED_SAMPLING, sd_family
from .loading import steering_family


@steering_family
class SDSteeringPipeline(SteeringPipeline):
    """Stable Diffusion 1.4 / 2.1: maps from the UNet's cross-attention layers over CLIP tokens."""

    denoiser_attr = "unet"

    def __init__(self, pipe, classifier, schedule=None, mode: str = "fast", step_size: float | None = None,
                 capture_backend: str = DEFAULT_CAPTURE_BACKEND):
        super().__init__(pipe, classifier, schedule, mode, step_size, capture_backend)
        self.family = sd_family(pipe.unet)

    @classmethod
    def accepts(cls, pipe) -> bool:
        return hasattr(pipe, "unet") and hasattr(pipe, "tokenizer")

    def map_tokenizer(self):
        return self.pipe.tokenizer, self.pipe.tokenizer.model_max_length

    def default_steps(self) -> int:
        return PUBLISHED_SAMPLING[self.family].steps

    def resolved_sampling(self, height: int | None, width: int | None, guidance_scale: float | None) -> dict:
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return {"height": height or side, "width": width or side,
                "guidance_scale": PUBLISHED_SAMPLING[self.family].guidance if guidance_scale is None
                else guidance_scale}

    @torch.no_grad()
    def generate(self, prompt, plan, *, steps, height, width, guidance_scale, seed, num_images,
                 schedule, diagnostics, latents, progress):
        pipe, device = self.pipe, self.device
        resolved = self.resolved_sampling(height, width, guidance_scale)
        height, width, guidance_scale = resolved["height"], resolved["width"], resolved["guidance_scale"]
        per_prompt = num_images if isinstance(prompt, str) else 1   # a list: one image per prompt
        cond, uncond = pipe.encode_prompt(prompt, device, per_prompt, guidance_scale > 1.0)
        pipe.scheduler.set_timesteps(steps, device=device)
        latents = pipe.prepare_latents(num_images, pipe.unet.config.in_channels, height, width,
                                       cond.dtype, device, seeded_generators(seed), latents)
        if schedule is not None:
            self.check_classifier()
        latents = self._denoise(latents, cond, uncond, guidance_scale, plan, schedule, diagnostics,
                                progress)
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil",
                                                do_denormalize=[True] * image.shape[0])

    def _denoise(self, latents, cond, uncond, guidance_scale, plan, schedule, diagnostics,
                 progress) -> torch.Tensor:
        """The denoising loop: on steered steps refine the latent first, then a plain (CFG) step."""
        pipe = self.pipe
        latent_hw = tuple(latents.shape[-2:])

        def unet(z, t, embeds):
            return pipe.unet(pipe.scheduler.scale_model_input(z, t), t,
                             encoder_hidden_states=embeds, return_dict=False)[0]

        with self._progress(len(pipe.scheduler.timesteps), progress) as bar:
            for i, t in enumerate(pipe.scheduler.timesteps):
                # The steering forward is conditional-only (no CFG batch), as published.
                latents = self._steer_if_scheduled(latents, i, plan, schedule,
                                                   lambda z: unet(z, t, cond), cond.shape[1],
                                                   latent_hw, diagnostics, bar)
                if guidance_scale > 1.0:
                    noise = unet(torch.cat([latents] * 2), t, torch.cat([uncond, cond]))
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                else:
                    noise = unet(latents, t, cond)
                latents = pipe.scheduler.step(noise, t, latents, return_dict=False)[0]
                bar.update()
        return latents
