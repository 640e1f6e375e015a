"""Which diffusers family a pipeline is, and the shapes that follow from it."""
from __future__ import annotations

import torch

from l2s.errors import L2SError


def pipeline_family(pipe) -> str:
    """"flux-dev", "flux-schnell", "sd14" or "sd21" for a diffusers FLUX / SD pipeline."""
    if hasattr(pipe, "transformer") and hasattr(pipe, "tokenizer_2"):
        return "flux-dev" if pipe.transformer.config.guidance_embeds else "flux-schnell"
    if hasattr(pipe, "unet") and hasattr(pipe, "tokenizer"):
        return "sd21" if pipe.unet.config.cross_attention_dim == 1024 else "sd14"
    raise L2SError(f"cannot steer or invert with a {type(pipe).__name__}: expected a FLUX or Stable Diffusion "
                   "pipeline")


def is_flux(pipe) -> bool:
    return pipeline_family(pipe).startswith("flux")


def denoiser(pipe) -> torch.nn.Module:
    """The module whose cross-attention is captured: FLUX's transformer or SD's UNet."""
    return pipe.transformer if is_flux(pipe) else pipe.unet


def pixels_per_token(pipe) -> int:
    """Image pixels per attention-map cell along a side: FLUX packs 2x2 latents into one token."""
    return 2 * pipe.vae_scale_factor if hasattr(pipe, "transformer") else pipe.vae_scale_factor
