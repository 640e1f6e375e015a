"""FLUX: RF-Inversion of a real image, recording attention maps on the reconstruction.

A controlled forward ODE drives the image latent ``y0`` towards a seeded noise ``y1`` (controller
strength ``gamma``), then a controlled reverse ODE drives it back towards ``y0`` (strength
``eta``); maps are recorded on the reverse pass. With ``gamma = eta = 1`` (the published setting)
the model's velocity cancels out of both loops and the trajectory is exactly
``x_i = sigma_i Z + (1 - sigma_i) y0`` with ``Z = a y0 + (1 - a) y1``,
``a = prod_i (1 - (sigma_i - sigma_{i+1}) / (1 - i/N))``; then one transformer forward per stored
step replaces ``2 x steps``. The general ODE path is kept for other strengths (and to test the
shortcut).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from l2s.errors import L2SError
from l2s.pipelines.families import pixels_per_token
from l2s.pipelines.flux_sampling import decode_packed, linear_sigmas, set_flux_timesteps
from l2s.tokens import check_prompt_length, token_groups
from .inversion_utils import InversionResult, collect_maps, phrase_groups, psnr, square_image, to_unit


def flux_sigmas(pipe, steps: int, image_seq_len: int) -> np.ndarray:
    """The pipeline's sigma schedule (``steps + 1`` values, ending in 0) with its own shift.

    Same construction as ``FluxPipeline.__call__``: linearly spaced sigmas, shifted by the
    scheduler (resolution-dependent ``mu`` when it uses dynamic shifting).
    """
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # never mutate the pipe's
    set_flux_timesteps(scheduler, steps, image_seq_len, None, linear_sigmas(steps))
    return scheduler.sigmas.double().cpu().numpy()


def rf_inversion_mix(sigmas: Sequence[float]) -> float:
    """``a`` in ``Z = a y0 + (1 - a) y1``: where RF-Inversion with ``gamma = 1`` ends.

    Each forward step ``i`` (``t_i = i/N``, ``N = len(sigmas)``) moves ``Y`` a fraction
    ``(sigma_i - sigma_{i+1}) / (1 - t_i)`` of the way to the noise ``y1``.
    """
    n = len(sigmas)
    a = 1.0
    for i in range(n - 1):
        a *= 1.0 - (float(sigmas[i]) - float(sigmas[i + 1])) / (1.0 - i / n)
    return a



class _FluxVelocity:
    """The transformer's velocity for one prompt and image: ``d x / d sigma = noise - data``."""

    def __init__(self, pipe, prompt: str, max_sequence_length: int, image_ids: Tensor) -> None:
        transformer = pipe.transformer
        self.transformer, self.image_ids = transformer, image_ids
        self.device, self.dtype = transformer.device, transformer.dtype
        self.prompt_embeds, self.pooled, self.text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length)
        # Guidance 0 during data creation (published; dev's embedding sees 0.0, schnell has none).
        self.guidance = (torch.zeros(1, device=self.device, dtype=torch.float32)
                         if transformer.config.guidance_embeds else None)

    def __call__(self, x: Tensor, timestep: float) -> Tensor:
        # The timestep is sigma (the transformer scales it by 1000).
        with self.transformer.cache_context("inversion"):
            return self.transformer(
                hidden_states=x, timestep=torch.full((1,), timestep, device=self.device, dtype=self.dtype),
                guidance=self.guidance, pooled_projections=self.pooled, encoder_hidden_states=self.prompt_embeds,
                txt_ids=self.text_ids, img_ids=self.image_ids, return_dict=False)[0]


def flux_invert(pipe, image, prompt, pairs_phrases, *, steps, store_steps, seed, size, gamma, eta,
                method, map_size, max_sequence_length, capture) -> InversionResult:
    """RF-Inversion of ``image`` with ``prompt`` (arguments as :func:`l2s.training.invert_and_capture`)."""
    multiple = pixels_per_token(pipe)
    if size % multiple:
        raise L2SError(f"image size must be a multiple of {multiple} for this FLUX model, got {size}")
    phrases, pairs = phrase_groups(pairs_phrases)
    check_prompt_length(pipe.tokenizer_2, prompt, max_sequence_length)
    groups = [g.indices for g in token_groups(pipe.tokenizer_2, prompt, phrases, max_sequence_length)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    reference, y0, image_ids, latent_hw = _encode_image(pipe, image, size, generator)
    transformer = pipe.transformer
    y1 = randn_tensor(y0.shape, generator=generator, device=transformer.device, dtype=transformer.dtype)
    velocity = _FluxVelocity(pipe, prompt, max_sequence_length, image_ids)
    sigmas = flux_sigmas(pipe, steps, y0.shape[1])

    exact_inversion = method == "exact" or (method == "auto" and gamma == 1.0)
    exact_reconstruction = method == "exact" or (method == "auto" and eta == 1.0)
    if method == "exact" and (gamma != 1.0 or eta != 1.0):
        raise L2SError("the closed-form RF-inversion path needs gamma = eta = 1; use method='ode'")
    z = _invert(velocity, y0, y1, sigmas, gamma, exact_inversion)

    maps: dict[int, Tensor] = {}
    latents: dict[int, Tensor] = {}

    def record(x: Tensor, i: int) -> Tensor:
        with capture.recording(groups, velocity.prompt_embeds.shape[1], latent_hw) as captured:
            out = velocity(x, float(sigmas[i]))
        maps[i] = collect_maps(captured, pairs, map_size)
        latents[i] = x.detach().float().cpu()
        return out

    final = _reconstruct(velocity, record, z, y0, sigmas, eta, store_steps, exact_reconstruction)
    reconstruction = decode_packed(pipe, final, size, size)
    quality = psnr(to_unit(reconstruction).cpu(), to_unit(reference))
    return InversionResult(prompt, maps, quality, latents,
                           "exact" if exact_inversion and exact_reconstruction else "ode")


def _encode_image(pipe, image, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, tuple]:
    """(preprocessed pixels, packed latent ``y0``, its image ids, token grid) of ``image``."""
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    reference = pipe.image_processor.preprocess(square_image(image, size, center_crop=False), height=size, width=size)
    pixels = reference.to(device=device, dtype=pipe.vae.dtype)
    # VAE posterior sample, as published, but seeded.
    raw = pipe.vae.encode(pixels).latent_dist.sample(generator=generator)
    raw = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    channels, lat_h, lat_w = raw.shape[1:]
    y0 = pipe._pack_latents(raw, 1, channels, lat_h, lat_w).to(dtype)
    image_ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, dtype)
    return reference, y0, image_ids, (lat_h // 2, lat_w // 2)


def _invert(velocity, y0: Tensor, y1: Tensor, sigmas: np.ndarray, gamma: float, exact: bool) -> Tensor:
    """Forward (inversion) ODE: clean (t = 0) towards noise, controlled towards ``y1``."""
    if exact:
        a = rf_inversion_mix(sigmas)
        return (a * y0.double() + (1.0 - a) * y1.double()).to(y0.dtype)
    n = len(sigmas)  # steps + 1
    z = y0
    for i in range(n - 1):
        t_i = i / n
        u = velocity(z, t_i)
        u_hat = u + gamma * ((y1 - z) / (1.0 - t_i) - u)
        z = z + u_hat * float(sigmas[i] - sigmas[i + 1])
    return z


def _reconstruct(velocity, record, z: Tensor, y0: Tensor, sigmas: np.ndarray, eta: float,
                 store_steps: Sequence[int], exact: bool) -> Tensor:
    """Reverse (reconstruction) ODE, controlled towards ``y0``; ``record`` runs the forwards of
    the stored steps. Returns the final latent."""
    if exact:
        for i in store_steps:
            s = float(sigmas[i])
            record((s * z.double() + (1.0 - s) * y0.double()).to(y0.dtype), i)
        return y0  # sigma_N = 0: the controlled reverse ODE ends exactly at y0
    x = z
    for i in range(len(sigmas) - 1):
        noise_pred = record(x, i) if i in store_steps else velocity(x, float(sigmas[i]))
        v = -noise_pred  # towards the data
        t_i = 1.0 - float(sigmas[i])
        v_hat = v + eta * ((y0 - x) / (1.0 - t_i) - v)
        x = x + v_hat * float(sigmas[i] - sigmas[i + 1])
    return x
