"""Unsteered shapes-model images in batches, each from its own prompt and seed.

Every image's starting noise comes from its own seeded generator exactly as a one-image call
makes it, so a batch reproduces, pixel for pixel, the base (unsteered) images the steering
pipeline and the bench make one at a time with the same seed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .model import image_size
from .settings import SHAPES_STEPS, SHAPES_TRUE_CFG


def seeded_latents(pipe, seeds: Sequence[int], size: int) -> torch.Tensor:
    """Packed initial latents, one per seed, as ``prepare_latents`` makes them for one image."""
    channels = pipe.transformer.config.in_channels // 4
    dtype = pipe.transformer.dtype
    out = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        latents, _ = pipe.prepare_latents(1, channels, size, size, dtype, pipe.device, generator, None)
        out.append(latents)
    return torch.cat(out)


@torch.no_grad()
def sample_images(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = SHAPES_STEPS,
                  true_cfg_scale: float = SHAPES_TRUE_CFG, batch_size: int = 32,
                  progress=None) -> np.ndarray:
    """(N, H, W, 3) uint8 images of ``prompts[i]`` from seed ``seeds[i]``, sampled as the shapes
    recipe samples (``steps`` Euler steps, true CFG against the empty caption); ``progress``: a
    tqdm bar updated per image."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    size = image_size(pipe)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        extra = {}
        if true_cfg_scale != 1.0:
            extra = {"negative_prompt": [""] * len(chunk), "true_cfg_scale": true_cfg_scale}
        result = pipe(prompt=chunk, latents=seeded_latents(pipe, seeds[start:start + batch_size], size),
                      num_inference_steps=steps, height=size, width=size, output_type="pil", **extra)
        images += [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in result.images]
        if progress is not None:
            progress.update(len(chunk))
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
