"""Sampling a diffusers FluxPipeline with log-probabilities: the trajectories GRPO learns from.

``FluxPipeline.__call__`` returns images only, so the loop is written here on the pipeline's own
parts: ``encode_prompt`` for the text, ``prepare_latents`` for the packed noise (per-image seeds,
as a one-image call with that seed would draw), the scheduler's sigmas (set exactly as the
pipeline sets them), true classifier-free guidance against the empty prompt as
``FluxPipeline(true_cfg_scale=...)`` does, and ``_unpack_latents`` + the VAE to decode. The first
``sde_steps`` steps are SDE steps (:func:`~l2s.grpo.sde.sde_step`) whose log-densities are kept;
the remaining steps (by default only the last) are plain ODE steps: they are never trained, and
noise added there would only blur the final image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from l2s.pipelines.families import pixels_per_token
from l2s.pipelines.flux_sampling import decode_to_pil, linear_sigmas, set_flux_timesteps
from .sde import sde_step

# Rows below which CPU GEMMs may pick other kernels (other last bits): 4 sufficed on the machine it
# was first set on, 12 on a later Xeon; every call is padded to this many rows so a row's output
# never depends on its batch.
MIN_BATCH = 16


@dataclass
class Schedule:
    """The scheduler's model timesteps (/1000, as the transformer reads them) and sigmas (steps + 1)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def flow_schedule(pipe, steps: int, image_seq_len: int, device) -> Schedule:
    """Sigmas ``linspace(1, 1/steps, steps)`` shifted for the image size, as FluxPipeline sets them."""
    timesteps = set_flux_timesteps(pipe.scheduler, steps, image_seq_len, device, linear_sigmas(steps))
    return Schedule(timesteps.clone() / 1000, pipe.scheduler.sigmas.clone().float().to(device))


@dataclass
class Conditioning:
    """Encoded prompts (one row per prompt), the empty prompt's encoding for true CFG (or None),
    and the text / image position ids every transformer call takes."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    negative: tuple[torch.Tensor, torch.Tensor] | None
    text_ids: torch.Tensor
    image_ids: torch.Tensor
    true_cfg: float
    guidance: float | None = None   # guidance-distilled models (FLUX.1-dev) read it as an input


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], true_cfg: float, size: int, device,
                   max_sequence_length: int = 512, guidance: float = 3.5) -> Conditioning:
    """The text encoders run once per prompt (frozen); the empty prompt too when ``true_cfg`` != 1."""
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                                  max_sequence_length=max_sequence_length)
    negative = None
    if true_cfg != 1.0:
        neg_embeds, neg_pooled, _ = pipe.encode_prompt(prompt="", prompt_2=None, device=device,
                                                       max_sequence_length=max_sequence_length)
        negative = (neg_embeds, neg_pooled)
    side = size // pixels_per_token(pipe)
    image_ids = pipe._prepare_latent_image_ids(1, side, side, device, embeds.dtype)
    distilled = getattr(pipe.transformer.config, "guidance_embeds", False)
    return Conditioning(embeds, pooled, negative, text_ids, image_ids, float(true_cfg),
                        float(guidance) if distilled else None)


def predict_velocity(model, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                     prompt_index: torch.Tensor) -> torch.Tensor:
    """The (guided) velocity in float32 for latents (B, N, C) of prompts ``prompt_index`` (B,).

    With true CFG the conditional and empty-prompt rows go through one forward of 2B rows, the
    same arrangement at sampling and at training. A row's output does not depend on the other rows
    of its batch once the batch has :data:`MIN_BATCH` rows (smaller batches may take other kernels,
    which differ in the last bits), so fewer rows are padded: a trajectory is then
    re-scored bit for bit whatever chunks sampling and training cut it into.
    """
    dtype = cond.embeds.dtype
    rows = latents.shape[0]
    if rows < MIN_BATCH:  # pad with copies of the last row; their outputs are dropped below
        pad = MIN_BATCH - rows
        latents = torch.cat([latents, latents[-1:].expand(pad, *latents.shape[1:])])
        prompt_index = torch.cat([prompt_index, prompt_index[-1:].expand(pad)])
    count = latents.shape[0]
    embeds, pooled = cond.embeds[prompt_index], cond.pooled[prompt_index]
    hidden, times = latents.to(dtype), timestep.to(dtype).expand(count)
    if cond.negative is not None:
        neg_embeds, neg_pooled = (t.expand(count, *t.shape[1:]) for t in cond.negative)
        embeds, pooled = torch.cat([embeds, neg_embeds]), torch.cat([pooled, neg_pooled])
        hidden, times = torch.cat([hidden, hidden]), torch.cat([times, times])
    guidance = None if cond.guidance is None else torch.full_like(times, cond.guidance, dtype=torch.float32)
    out = model(hidden_states=hidden, timestep=times, guidance=guidance, pooled_projections=pooled,
                encoder_hidden_states=embeds, txt_ids=cond.text_ids, img_ids=cond.image_ids,
                return_dict=False)[0].float()
    if cond.negative is None:
        return out[:rows]
    positive, negative = out[:count], out[count:]
    return (negative + cond.true_cfg * (positive - negative))[:rows]


@dataclass
class Rollout:
    """Sampled trajectories: latents at every sigma (B, steps + 1, N, C), the log-density of each
    SDE step (B, sde_steps), the prompt of each row and the decoded images."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    prompt_index: torch.Tensor
    images: list


def initial_noise(pipe, seeds: list[int], size: int, device, dtype=torch.float32) -> torch.Tensor:
    """Packed noise (B, N, C), image b drawn from ``torch.Generator("cpu").manual_seed(seeds[b])``
    exactly as a one-image pipeline call with that seed draws it."""
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    channels = pipe.transformer.config.in_channels // 4
    latents, _ = pipe.prepare_latents(len(seeds), channels, size, size, dtype, "cpu", generators)
    return latents.to(device)


@torch.no_grad()
def sample(model, pipe, cond: Conditioning, schedule: Schedule, prompt_index: torch.Tensor,
           seeds: list[int], size: int, noise_level: float, sde_steps: int, chunk: int,
           bar=None) -> Rollout:
    """Sample one image per (prompt, seed) row, ``chunk`` rows per transformer call.

    The SDE noise of a chunk comes from a generator seeded by the chunk's first seed, so a
    rollout is reproducible from its seeds alone. ``bar`` (tqdm) advances by one per chunk-step.
    """
    device = cond.embeds.device
    noise = initial_noise(pipe, seeds, size, device)
    cap = float(schedule.sigmas[1])
    latents, log_probs = [], []
    for start in range(0, len(seeds), chunk):
        rows = slice(start, start + chunk)
        x, index = noise[rows].float(), prompt_index[rows]
        generator = torch.Generator("cpu").manual_seed(int(seeds[start]) + 1)
        path, scores = [x], []
        for j in range(schedule.steps):
            v = predict_velocity(model, x, schedule.timesteps[j], cond, index)
            level = noise_level if j < sde_steps else 0.0
            step = sde_step(v, x, schedule.sigmas[j], schedule.sigmas[j + 1], level, cap, generator=generator)
            x = step.sample
            path.append(x)
            if j < sde_steps:
                scores.append(step.log_prob)
            if bar is not None:
                bar.update()
        latents.append(torch.stack(path, dim=1))
        log_probs.append(torch.stack(scores, dim=1) if scores else torch.zeros(x.shape[0], 0, device=device))
    latents = torch.cat(latents)
    return Rollout(latents, torch.cat(log_probs), prompt_index, decode(pipe, latents[:, -1], size))


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, size: int) -> list:
    """Packed final latents -> PIL images, as FluxPipeline decodes them."""
    return decode_to_pil(pipe, latents, size, size)
