"""Shared pieces of image inversion: pipeline families and their published settings, the
inversion result, and small image / map helpers used by the FLUX and SD inversions."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from l2s.errors import L2SError
from l2s.pipelines.families import PUBLISHED_SAMPLING, pipeline_family, pixels_per_token

# Published step counts (data is made as the family samples) and stored step indices per pipeline family.
DEFAULT_STEPS = {family: published.steps for family, published in PUBLISHED_SAMPLING.items()}
DEFAULT_STORE_STEPS = {
    "flux-schnell": (1, 3),
    "flux-dev": (5, 10, 15, 20, 25, 49),
    "sd14": (5, 10, 15, 20, 25, 49),
    "sd21": (5, 10, 15, 20, 25, 49),
}
# The published --min-psnr filters (dB) per family: a reconstruction below it is one the published data left out.
PUBLISHED_MIN_PSNR = {"flux-schnell": 20.0, "flux-dev": 20.0, "sd14": 19.5, "sd21": 19.5}
_MAX_PSNR = 100.0  # a perfect reconstruction is reported as 100 dB, not inf (JSON-friendly)


@dataclass
class InversionResult:
    """Maps recorded while reconstructing one image with one prompt.

    ``maps[step]`` is ``(n_pairs, 2, C, map_size, map_size)`` float32 on the CPU (index 0 of dim 1
    the subject, 1 the object); ``latents[step]`` the latent the recording forward saw; ``psnr``
    the reconstruction's PSNR (dB) against the resized input image.
    """

    prompt: str
    maps: dict[int, Tensor]
    psnr: float
    latents: dict[int, Tensor] = field(default_factory=dict)
    method: str = "exact"


def default_image_size(pipe) -> int:
    """The published square image side for this pipeline, scaled to its VAE.

    FLUX: token grid 16 (schnell) / 32 (dev) x 2 (packing) x VAE factor (256 / 512 px for the
    real models); SD: the UNet's sample size x VAE factor (512 px).
    """
    family = pipeline_family(pipe)
    if family.startswith("flux"):
        return PUBLISHED_SAMPLING[family].token_grid * pixels_per_token(pipe)
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def map_grid(pipe, size: int) -> tuple[int, int]:
    """The ``latent_hw`` the attention capture needs for a ``size`` x ``size`` image."""
    return size // pixels_per_token(pipe), size // pixels_per_token(pipe)


def psnr(reconstruction: Tensor, reference: Tensor) -> float:
    """PSNR in dB of two images with values in [0, 1] (capped at 100 dB)."""
    mse = torch.mean((reconstruction.double() - reference.double()) ** 2).item()
    return _MAX_PSNR if mse <= 10 ** (-_MAX_PSNR / 10) else 10.0 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def phrase_groups(pairs_phrases: Sequence[tuple[str, str]]) -> tuple[list[str], list[tuple[int, int]]]:
    """Unique phrases (first-seen order) and each pair as indices into them."""
    phrases: list[str] = []
    for pair in pairs_phrases:
        for phrase in pair:
            if phrase not in phrases:
                phrases.append(phrase)
    return phrases, [(phrases.index(s), phrases.index(o)) for s, o in pairs_phrases]


def check_store_steps(store_steps: Sequence[int], steps: int, spelled=str) -> tuple[int, ...]:
    """The sorted unique step indices to store maps at (``L2SError`` when outside ``[0, steps)``,
    naming the arguments as ``spelled`` writes them)."""
    store = tuple(sorted(set(int(s) for s in store_steps)))
    if not store:
        raise L2SError(f"{spelled('store_steps')}: no step indices to store maps at")
    if store[0] < 0 or store[-1] >= steps:
        raise L2SError(f"{spelled('store_steps')} {' '.join(map(str, store))} must lie in [0, {steps}) for "
                       f"{spelled('steps')} {steps}")
    return store


def square_image(image: Image.Image, size: int, center_crop: bool) -> Image.Image:
    """RGB ``size`` x ``size``: FLUX data resizes without cropping (aspect distorted, as published),
    SD data centre-crops to a square first."""
    image = image.convert("RGB")
    if center_crop and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return image


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] VAE pixels -> [0, 1]."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def collect_maps(maps, pairs: list[tuple[int, int]], map_size: int) -> Tensor:
    """Classifier inputs of every pair from one recorded forward: (n_pairs, 2, C, m, m) on CPU."""
    return torch.cat([maps.classifier_input(s, o, map_size=map_size) for s, o in pairs]).float().cpu()
