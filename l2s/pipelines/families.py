"""Which diffusers family a pipeline is, its published sampling, the shapes that follow from it, and which
model it is."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from l2s.classifier.hub import cache_entry_hub_id
from l2s.errors import L2SError
from l2s.steer.presets import PUBLISHED_STEPS


@dataclass(frozen=True)
class PublishedSampling:
    """A family's published sampling: denoising steps, guidance scale, and (FLUX) the latent token
    grid of its images (SD's size comes from its UNet's ``sample_size``)."""

    steps: int
    guidance: float
    token_grid: int | None = None


# What the published models sample with; the native pipelines follow diffusers' own defaults instead.
PUBLISHED_SAMPLING = {
    "flux-dev": PublishedSampling(PUBLISHED_STEPS["flux-dev"], guidance=3.5, token_grid=32),      # 512 px
    "flux-schnell": PublishedSampling(PUBLISHED_STEPS["flux-schnell"], guidance=0.0, token_grid=16),  # 256 px
    "sd14": PublishedSampling(PUBLISHED_STEPS["sd14"], guidance=7.5),
    "sd21": PublishedSampling(PUBLISHED_STEPS["sd21"], guidance=7.5),
}


def pipeline_family(pipe) -> str:
    """"flux-dev", "flux-schnell", "sd14" or "sd21" for a diffusers FLUX / SD pipeline."""
    if hasattr(pipe, "transformer") and hasattr(pipe, "tokenizer_2"):
        return flux_family(pipe.transformer)
    if hasattr(pipe, "unet") and hasattr(pipe, "tokenizer"):
        return sd_family(pipe.unet)
    raise L2SError(f"cannot steer or invert with a {type(pipe).__name__}: expected a FLUX or Stable Diffusion "
                   "pipeline")


def flux_family(transformer) -> str:
    """Whose published settings a FLUX transformer samples with: dev has a guidance embedding, schnell not."""
    return "flux-dev" if transformer.config.guidance_embeds else "flux-schnell"


def sd_family(unet) -> str:
    """SD 2.1's UNet reads 1024-wide text embeddings (OpenCLIP), 1.4's 768 (CLIP)."""
    return "sd21" if unet.config.cross_attention_dim == 1024 else "sd14"


def is_flux(pipe) -> bool:
    return pipeline_family(pipe).startswith("flux")


def denoiser(pipe) -> torch.nn.Module:
    """The module whose cross-attention is captured: FLUX's transformer or SD's UNet."""
    return pipe.transformer if is_flux(pipe) else pipe.unet


def pixels_per_token(pipe) -> int:
    """Image pixels per attention-map cell along a side: FLUX packs 2x2 latents into one token."""
    return 2 * pipe.vae_scale_factor if hasattr(pipe, "transformer") else pipe.vae_scale_factor


# Kinds of model that a map dataset names by kind, not by folder (every shapes-world model is
# "shapes-world"): name -> test of a pipeline, added by the module that defines the kind's components.
MODEL_KINDS: dict[str, Callable] = {}


def model_kind(name: str):
    """Decorator of a test ``pipe -> bool``: pipelines it accepts are the model ``name``."""
    def register(test):
        MODEL_KINDS[name] = test
        return test
    return register


def model_name(pipe) -> str | None:
    """Which model ``pipe`` is, spelled as a map dataset records it (:func:`canonical_model_name`):
    its kind's name, else the folder or hub id it was loaded from; None for a pipeline built in code."""
    for name, test in MODEL_KINDS.items():
        if test(pipe):
            return name
    loaded_from = getattr(pipe, "name_or_path", None)
    return canonical_model_name(loaded_from) if loaded_from else None


def canonical_model_name(name: str) -> str:
    """``name`` spelled one way: a folder by its absolute path, a snapshot in the Hugging Face cache
    (``models--owner--name/snapshots/REV``) by its hub id, anything else as given."""
    path = Path(name)
    if not path.exists():
        return name
    path = path.resolve()
    repo_id = cache_entry_hub_id(path.parent.parent.name) if path.parent.name == "snapshots" else None
    return str(path) if repo_id is None else repo_id
