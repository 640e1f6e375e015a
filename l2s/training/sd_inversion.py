"""Stable Diffusion: fixed-point DDIM inversion of a real image (``num_iter`` fixed-point
iterations per step, guidance 1, i.e. conditional only), then a DDIM reconstruction that records
the attention maps."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from l2s.errors import L2SError
from l2s.tokens import check_prompt_length, token_groups
from .inversion_utils import InversionResult, collect_maps, phrase_groups, psnr, square_image, to_unit


def sd_invert(pipe, image, prompt, pairs_phrases, *, steps, store_steps, seed, size, num_iter, map_size,
              capture) -> InversionResult:
    """Fixed-point DDIM inversion of ``image`` with ``prompt`` (arguments as
    :func:`l2s.training.invert_and_capture`)."""
    from diffusers import DDIMScheduler

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    if size % pipe.vae_scale_factor:
        raise L2SError(f"image size must be a multiple of {pipe.vae_scale_factor} for this model, got {size}")
    phrases, pairs = phrase_groups(pairs_phrases)
    max_length = pipe.tokenizer.model_max_length
    check_prompt_length(pipe.tokenizer, prompt, max_length)
    groups = [g.indices for g in token_groups(pipe.tokenizer, prompt, phrases, max_length)]
    generator = torch.Generator(device="cpu").manual_seed(seed)

    reference = pipe.image_processor.preprocess(square_image(image, size, center_crop=True), height=size, width=size)
    pixels = reference.to(device=device, dtype=pipe.vae.dtype)
    z0 = pipe.vae.encode(pixels).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
    z0 = z0.to(dtype)
    cond, _ = pipe.encode_prompt(prompt, device, 1, False)  # guidance 1: the conditional branch only

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # deterministic DDIM (eta 0)
    scheduler.set_timesteps(steps, device=device)

    def eps(z: Tensor, t: Tensor) -> Tensor:
        return unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]

    z = _invert(eps, scheduler, z0, steps, num_iter, device)

    # Reconstruction: plain DDIM, maps recorded at the stored steps.
    maps: dict[int, Tensor] = {}
    latents: dict[int, Tensor] = {}
    latent_hw = tuple(z0.shape[-2:])
    for i, t in enumerate(scheduler.timesteps):
        if i in store_steps:
            with capture.recording(groups, cond.shape[1], latent_hw) as captured:
                e = eps(z, t)
            maps[i] = collect_maps(captured, pairs, map_size)
            latents[i] = z.detach().float().cpu()
        else:
            e = eps(z, t)
        z = scheduler.step(e, t, z, return_dict=False)[0]

    reconstruction = pipe.vae.decode((z / pipe.vae.config.scaling_factor).to(pipe.vae.dtype), return_dict=False)[0]
    quality = psnr(to_unit(reconstruction).cpu(), to_unit(reference))
    return InversionResult(prompt, maps, quality, latents, "fixed-point")


def _invert(eps, scheduler, z0: Tensor, steps: int, num_iter: int, device) -> Tensor:
    """Inversion, clean -> noisy: each ``z_t`` solves ``z_t = DDIM(eps(z_t, t))`` from the previous
    latent, by fixed-point iteration."""
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
    final_alpha = float(scheduler.final_alpha_cumprod)
    step_ratio = scheduler.config.num_train_timesteps // steps

    def alpha(t: int) -> float:
        return float(alphas[t]) if t >= 0 else final_alpha

    z = z0
    for t in scheduler.timesteps.flip(0):  # the timesteps are descending
        a_prev, a_t = alpha(int(t) - step_ratio), alpha(int(t))
        z_prev, z_next = z, z
        for _ in range(max(1, num_iter)):
            e = eps(z_next, t)
            x0 = (z_prev - math.sqrt(1 - a_prev) * e) / math.sqrt(a_prev)
            z_next = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * e
        z = z_next
    return z
