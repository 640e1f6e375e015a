"""FLUX's sampling arithmetic as diffusers' ``FluxPipeline`` does it: the resolution-shifted
timesteps and the decode of packed latents. The steered pipelines, GRPO rollouts and RF-Inversion
all sample the same model, so they share these rather than each copy them."""
from __future__ import annotations

import numpy as np
import torch


def linear_sigmas(steps: int) -> np.ndarray:
    """``FluxPipeline``'s default sigmas: ``linspace(1, 1/steps, steps)`` (the scheduler shifts them)."""
    return np.linspace(1.0, 1 / steps, steps)


def flux_shift(scheduler_config, image_seq_len: int) -> float:
    """The shift ``mu`` for an image of ``image_seq_len`` packed tokens, from the scheduler's config
    (diffusers' defaults where it names none, as ``FluxPipeline`` reads them)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler_config
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", 1.15))


def set_flux_timesteps(scheduler, steps: int, image_seq_len: int, device, sigmas) -> torch.Tensor:
    """Set ``scheduler``'s timesteps as ``FluxPipeline`` does and return them: ``sigmas`` (usually
    :func:`linear_sigmas`; None: the scheduler's own spacing) shifted for the image size."""
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    mu = flux_shift(scheduler.config, image_seq_len)
    timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
    return timesteps


def decode_packed(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents (B, N, C) -> VAE pixels in [-1, 1], unpacked and unscaled as ``FluxPipeline`` does."""
    unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    return pipe.vae.decode(unpacked.to(pipe.vae.dtype), return_dict=False)[0]


def decode_to_pil(pipe, latents: torch.Tensor, height: int, width: int) -> list:
    """Packed latents -> PIL images (:func:`decode_packed`, then the pipeline's postprocessing)."""
    return pipe.image_processor.postprocess(decode_packed(pipe, latents, height, width), output_type="pil")
