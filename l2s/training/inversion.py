"""Invert a real image with a diffusion model and record attention maps while reconstructing it.

This is how the classifier's training data is made (SPEC §4, reference note §5.5-§5.6):

* FLUX (dev and schnell): **RF-Inversion**. A controlled forward ODE drives the image latent
  ``y0`` towards a seeded noise ``y1`` (controller strength ``gamma``), then a controlled reverse
  ODE drives it back towards ``y0`` (strength ``eta``); maps are recorded on the reverse pass.
  With ``gamma = eta = 1`` (the published setting) the model's velocity cancels out of both
  loops and the trajectory is exactly ``x_i = sigma_i Z + (1 - sigma_i) y0`` with
  ``Z = a y0 + (1 - a) y1``, ``a = prod_i (1 - (sigma_i - sigma_{i+1}) / (1 - i/N))``; we then
  run one transformer forward per stored step instead of ``2 x steps``. The general ODE path is
  kept for other strengths (and to test the shortcut).
* Stable Diffusion: **fixed-point DDIM inversion** (``num_iter`` fixed-point iterations per step,
  guidance 1, i.e. conditional only), then a DDIM reconstruction that records the maps.

Everything is seeded through ``torch.Generator`` (VAE sampling, inversion noise), so a given
(image, prompt, seed) always gives the same maps.

The *dual* part (:func:`dual_invert`): every labelled image is inverted with the correct relation
word (``pos``) and with a relation word drawn from the wrong classes (``neg``); both keep the
true label, so the classifier cannot learn to read the relation word back from the maps.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffusers.utils.torch_utils import randn_tensor

from l2s.capture import AttentionCapture
from l2s.errors import L2SError, UnsupportedRelationError
from l2s.relations import NEUTRAL, PROMPT_PHRASE, PUBLISHED_CLASSES, canonical_class
from l2s.tokens import check_prompt_length, token_groups

__all__ = [
    "DEFAULT_STEPS",
    "DEFAULT_STORE_STEPS",
    "InversionResult",
    "DualRecord",
    "TrainingPrompt",
    "pipeline_family",
    "default_image_size",
    "map_grid",
    "rf_inversion_mix",
    "invert_and_capture",
    "training_prompts",
    "dual_invert",
    "psnr",
]

# Published step counts and stored step indices (reference note §5.5-§5.6).
DEFAULT_STEPS = {"flux-schnell": 4, "flux-dev": 50, "sd14": 50, "sd21": 50}
DEFAULT_STORE_STEPS = {
    "flux-schnell": (1, 3),
    "flux-dev": (5, 10, 15, 20, 25, 49),
    "sd14": (5, 10, 15, 20, 25, 49),
    "sd21": (5, 10, 15, 20, 25, 49),
}
# Published FLUX token grids: schnell 16x16 (256 px), dev 32x32 (512 px).
_FLUX_GRID = {"flux-schnell": 16, "flux-dev": 32}
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


def pipeline_family(pipe) -> str:
    """"flux-dev", "flux-schnell", "sd14" or "sd21" for a diffusers FLUX / SD pipeline."""
    if hasattr(pipe, "transformer") and hasattr(pipe, "tokenizer_2"):
        return "flux-dev" if pipe.transformer.config.guidance_embeds else "flux-schnell"
    if hasattr(pipe, "unet") and hasattr(pipe, "tokenizer"):
        return "sd21" if pipe.unet.config.cross_attention_dim == 1024 else "sd14"
    raise L2SError(f"cannot invert with a {type(pipe).__name__}: expected a FLUX or Stable Diffusion pipeline")


def _is_flux(pipe) -> bool:
    return pipeline_family(pipe).startswith("flux")


def default_image_size(pipe) -> int:
    """The published square image side for this pipeline, scaled to its VAE.

    FLUX: token grid 16 (schnell) / 32 (dev) x 2 (packing) x VAE factor (256 / 512 px for the
    real models); SD: the UNet's sample size x VAE factor (512 px).
    """
    family = pipeline_family(pipe)
    if family.startswith("flux"):
        return _FLUX_GRID[family] * 2 * pipe.vae_scale_factor
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def map_grid(pipe, size: int) -> tuple[int, int]:
    """The ``latent_hw`` the attention capture needs for a ``size`` x ``size`` image."""
    if _is_flux(pipe):
        multiple = 2 * pipe.vae_scale_factor
        return size // multiple, size // multiple
    return size // pipe.vae_scale_factor, size // pipe.vae_scale_factor


def psnr(reconstruction: Tensor, reference: Tensor) -> float:
    """PSNR in dB of two images with values in [0, 1] (capped at 100 dB)."""
    mse = torch.mean((reconstruction.double() - reference.double()) ** 2).item()
    return _MAX_PSNR if mse <= 10 ** (-_MAX_PSNR / 10) else 10.0 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _denoiser(pipe) -> torch.nn.Module:
    return pipe.transformer if _is_flux(pipe) else pipe.unet


def _phrase_groups(pairs_phrases: Sequence[tuple[str, str]]) -> tuple[list[str], list[tuple[int, int]]]:
    """Unique phrases (first-seen order) and each pair as indices into them."""
    phrases: list[str] = []
    for pair in pairs_phrases:
        for phrase in pair:
            if phrase not in phrases:
                phrases.append(phrase)
    return phrases, [(phrases.index(s), phrases.index(o)) for s, o in pairs_phrases]


def _check_store_steps(store_steps: Sequence[int], steps: int) -> tuple[int, ...]:
    store = tuple(sorted(set(int(s) for s in store_steps)))
    if not store:
        raise L2SError("no step indices to store maps at")
    if store[0] < 0 or store[-1] >= steps:
        raise L2SError(f"stored step indices {store} must lie in [0, {steps}) for {steps} steps")
    return store


def _square_image(image: Image.Image, size: int, center_crop: bool) -> Image.Image:
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


def _to_unit(images: Tensor) -> Tensor:
    """[-1, 1] VAE pixels -> [0, 1]."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def _collect(maps, pairs: list[tuple[int, int]], map_size: int) -> Tensor:
    """Classifier inputs of every pair from one recorded forward: (n_pairs, 2, C, m, m) on CPU."""
    return torch.cat([maps.classifier_input(s, o, map_size=map_size) for s, o in pairs]).float().cpu()


# --------------------------------------------------------------------------------------------
# FLUX: RF-Inversion
# --------------------------------------------------------------------------------------------


def flux_sigmas(pipe, steps: int, image_seq_len: int) -> np.ndarray:
    """The pipeline's sigma schedule (``steps + 1`` values, ending in 0) with its own shift.

    Same construction as ``FluxPipeline.__call__``: linearly spaced sigmas, shifted by the
    scheduler (resolution-dependent ``mu`` when it uses dynamic shifting).
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # never mutate the pipe's
    cfg = scheduler.config
    mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
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


def _flux_invert(pipe, image, prompt, pairs_phrases, *, steps, store_steps, seed, size, gamma, eta,
                 method, map_size, max_sequence_length, capture) -> InversionResult:
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    multiple = 2 * pipe.vae_scale_factor
    if size % multiple:
        raise L2SError(f"image size must be a multiple of {multiple} for this FLUX model, got {size}")
    phrases, pairs = _phrase_groups(pairs_phrases)
    check_prompt_length(pipe.tokenizer_2, prompt, max_sequence_length)
    groups = [g.indices for g in token_groups(pipe.tokenizer_2, prompt, phrases, max_sequence_length)]
    generator = torch.Generator(device="cpu").manual_seed(seed)

    # Image -> packed latent y0 (VAE posterior sample, as published, but seeded).
    reference = pipe.image_processor.preprocess(_square_image(image, size, center_crop=False), height=size, width=size)
    pixels = reference.to(device=device, dtype=pipe.vae.dtype)
    raw = pipe.vae.encode(pixels).latent_dist.sample(generator=generator)
    raw = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    channels, lat_h, lat_w = raw.shape[1:]
    y0 = pipe._pack_latents(raw, 1, channels, lat_h, lat_w).to(dtype)
    image_ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, dtype)
    y1 = randn_tensor(y0.shape, generator=generator, device=device, dtype=dtype)

    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
        max_sequence_length=max_sequence_length)
    # Guidance 0 during data creation (published; dev's embedding sees 0.0, schnell has none).
    guidance = torch.zeros(1, device=device, dtype=torch.float32) if transformer.config.guidance_embeds else None
    sigmas = flux_sigmas(pipe, steps, y0.shape[1])
    n = len(sigmas)  # steps + 1
    latent_hw = (lat_h // 2, lat_w // 2)

    def velocity(x: Tensor, timestep: float) -> Tensor:
        # The transformer predicts d x / d sigma = noise - data; timestep is sigma (it scales by 1000).
        with transformer.cache_context("inversion"):
            return transformer(hidden_states=x, timestep=torch.full((1,), timestep, device=device, dtype=dtype),
                               guidance=guidance, pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
                               txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]

    exact_inversion = method == "exact" or (method == "auto" and gamma == 1.0)
    exact_reconstruction = method == "exact" or (method == "auto" and eta == 1.0)
    if method == "exact" and (gamma != 1.0 or eta != 1.0):
        raise L2SError("the closed-form RF-inversion path needs gamma = eta = 1; use method='ode'")

    # Forward (inversion) ODE: clean (t = 0) towards noise, controlled towards y1.
    if exact_inversion:
        a = rf_inversion_mix(sigmas)
        z = (a * y0.double() + (1.0 - a) * y1.double()).to(dtype)
    else:
        z = y0
        for i in range(n - 1):
            t_i = i / n
            u = velocity(z, t_i)
            u_hat = u + gamma * ((y1 - z) / (1.0 - t_i) - u)
            z = z + u_hat * float(sigmas[i] - sigmas[i + 1])

    # Reverse (reconstruction) ODE, controlled towards y0; maps recorded at the stored steps.
    maps: dict[int, Tensor] = {}
    latents: dict[int, Tensor] = {}

    def record(x: Tensor, i: int) -> Tensor:
        with capture.recording(groups, prompt_embeds.shape[1], latent_hw) as captured:
            out = velocity(x, float(sigmas[i]))
        maps[i] = _collect(captured, pairs, map_size)
        latents[i] = x.detach().float().cpu()
        return out

    if exact_reconstruction:
        for i in store_steps:
            s = float(sigmas[i])
            record((s * z.double() + (1.0 - s) * y0.double()).to(dtype), i)
        final = y0  # sigma_N = 0: the controlled reverse ODE ends exactly at y0
    else:
        x = z
        for i in range(n - 1):
            noise_pred = record(x, i) if i in store_steps else velocity(x, float(sigmas[i]))
            v = -noise_pred  # towards the data
            t_i = 1.0 - float(sigmas[i])
            v_hat = v + eta * ((y0 - x) / (1.0 - t_i) - v)
            x = x + v_hat * float(sigmas[i] - sigmas[i + 1])
        final = x

    decoded = pipe._unpack_latents(final, size, size, pipe.vae_scale_factor)
    decoded = decoded / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    reconstruction = pipe.vae.decode(decoded.to(pipe.vae.dtype), return_dict=False)[0]
    quality = psnr(_to_unit(reconstruction).cpu(), _to_unit(reference))
    return InversionResult(prompt, maps, quality, latents,
                           "exact" if exact_inversion and exact_reconstruction else "ode")


# --------------------------------------------------------------------------------------------
# Stable Diffusion: fixed-point DDIM inversion
# --------------------------------------------------------------------------------------------


def _sd_invert(pipe, image, prompt, pairs_phrases, *, steps, store_steps, seed, size, num_iter, map_size,
               capture) -> InversionResult:
    from diffusers import DDIMScheduler

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    if size % pipe.vae_scale_factor:
        raise L2SError(f"image size must be a multiple of {pipe.vae_scale_factor} for this model, got {size}")
    phrases, pairs = _phrase_groups(pairs_phrases)
    max_length = pipe.tokenizer.model_max_length
    check_prompt_length(pipe.tokenizer, prompt, max_length)
    groups = [g.indices for g in token_groups(pipe.tokenizer, prompt, phrases, max_length)]
    generator = torch.Generator(device="cpu").manual_seed(seed)

    reference = pipe.image_processor.preprocess(_square_image(image, size, center_crop=True), height=size, width=size)
    pixels = reference.to(device=device, dtype=pipe.vae.dtype)
    z0 = pipe.vae.encode(pixels).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
    z0 = z0.to(dtype)
    cond, _ = pipe.encode_prompt(prompt, device, 1, False)  # guidance 1: the conditional branch only

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # deterministic DDIM (eta 0)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps  # descending
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
    final_alpha = float(scheduler.final_alpha_cumprod)
    step_ratio = scheduler.config.num_train_timesteps // steps

    def alpha(t: int) -> float:
        return float(alphas[t]) if t >= 0 else final_alpha

    def eps(z: Tensor, t: Tensor) -> Tensor:
        return unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]

    # Inversion, clean -> noisy: z_t solves z_t = DDIM(eps(z_t, t)) from z_prev, by fixed-point iteration.
    z = z0
    for t in timesteps.flip(0):
        a_prev, a_t = alpha(int(t) - step_ratio), alpha(int(t))
        z_prev, z_next = z, z
        for _ in range(max(1, num_iter)):
            e = eps(z_next, t)
            x0 = (z_prev - math.sqrt(1 - a_prev) * e) / math.sqrt(a_prev)
            z_next = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * e
        z = z_next

    # Reconstruction: plain DDIM, maps recorded at the stored steps.
    maps: dict[int, Tensor] = {}
    latents: dict[int, Tensor] = {}
    latent_hw = tuple(z0.shape[-2:])
    for i, t in enumerate(timesteps):
        if i in store_steps:
            with capture.recording(groups, cond.shape[1], latent_hw) as captured:
                e = eps(z, t)
            maps[i] = _collect(captured, pairs, map_size)
            latents[i] = z.detach().float().cpu()
        else:
            e = eps(z, t)
        z = scheduler.step(e, t, z, return_dict=False)[0]

    reconstruction = pipe.vae.decode((z / pipe.vae.config.scaling_factor).to(pipe.vae.dtype), return_dict=False)[0]
    quality = psnr(_to_unit(reconstruction).cpu(), _to_unit(reference))
    return InversionResult(prompt, maps, quality, latents, "fixed-point")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def invert_and_capture(
    pipe,
    image: Image.Image,
    prompt: str,
    pairs_phrases: Sequence[tuple[str, str]],
    steps: int | None = None,
    store_steps: Sequence[int] | None = None,
    seed: int = 0,
    size: int | None = None,
    *,
    gamma: float = 1.0,
    eta: float = 1.0,
    method: str = "auto",
    num_iter: int = 5,
    map_size: int = 16,
    max_sequence_length: int = 512,
    capture: AttentionCapture | None = None,
) -> InversionResult:
    """Invert ``image`` with ``prompt`` and record the classifier inputs while reconstructing it.

    Args:
        pipe: a diffusers ``FluxPipeline`` (RF-Inversion) or ``StableDiffusionPipeline``
            (fixed-point DDIM inversion).
        image: the source image (any mode; FLUX resizes it to a square, SD centre-crops first).
        prompt: the reconstruction prompt, e.g. "A cat to the left of a dog".
        pairs_phrases: ``(subject phrase, object phrase)`` per relation to record; each phrase
            must occur in ``prompt`` (first occurrence; multi-token phrases are averaged).
        steps: sampling steps (default: 4 schnell, 50 dev / SD).
        store_steps: step indices to record (default: schnell (1, 3), others (5, 10, ..., 49)).
        seed: seeds the VAE posterior sample and the inversion noise.
        size: square image side (default :func:`default_image_size`).
        gamma, eta: RF-Inversion controller strengths of the inversion / reconstruction ODEs
            (FLUX only; published 1, 1).
        method: FLUX only. "auto" uses the closed form for every pass whose strength is 1 and the
            ODE otherwise; "exact" forces the closed form (needs gamma = eta = 1); "ode" always
            integrates (two model forwards per step, as the published code).
        num_iter: SD fixed-point iterations per inversion step (published 5).
        map_size: classifier map side.
        max_sequence_length: T5 length for FLUX (published 512, also for schnell).
        capture: an :class:`AttentionCapture` already installed on the model (reused across
            calls when building a dataset); one is installed and removed here otherwise.

    Returns:
        An :class:`InversionResult`: per stored step an ``(n_pairs, 2, C, map_size, map_size)``
        tensor, and the reconstruction PSNR.
    """
    family = pipeline_family(pipe)
    steps = int(steps or DEFAULT_STEPS[family])
    store = _check_store_steps(DEFAULT_STORE_STEPS[family] if store_steps is None else store_steps, steps)
    size = int(size or default_image_size(pipe))
    if not pairs_phrases:
        raise L2SError("no (subject, object) pairs to record")
    if method not in ("auto", "exact", "ode"):
        raise ValueError(f"method must be 'auto', 'exact' or 'ode', got {method!r}")
    own_capture = capture is None
    capture = AttentionCapture(_denoiser(pipe)) if own_capture else capture
    try:
        if family.startswith("flux"):
            return _flux_invert(pipe, image, prompt, pairs_phrases, steps=steps, store_steps=store, seed=seed,
                                size=size, gamma=float(gamma), eta=float(eta), method=method, map_size=map_size,
                                max_sequence_length=max_sequence_length, capture=capture)
        return _sd_invert(pipe, image, prompt, pairs_phrases, steps=steps, store_steps=store, seed=seed, size=size,
                          num_iter=num_iter, map_size=map_size, capture=capture)
    finally:
        if own_capture:
            capture.remove()


# --------------------------------------------------------------------------------------------
# Dual inversion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPrompt:
    """One reconstruction prompt of a labelled sample.

    ``relation_word`` is the relation written in the prompt (the class name, "is" for the
    neutral class); ``label`` the sample's true class name, the same for ``pos`` and ``neg``.
    """

    prompt: str
    prompt_type: str  # "pos" (correct relation word) or "neg" (a wrong one)
    relation_word: str
    label: str
    subject: str  # phrase whose maps go to index 0
    object: str  # phrase whose maps go to index 1


def _class_name_for(relation: str, class_names: Sequence[str]) -> str:
    wanted = canonical_class(relation)
    for name in class_names:
        if canonical_class(name) == wanted:
            return name
    raise UnsupportedRelationError(
        f"relation {relation!r} is not a class of this dataset (classes: {', '.join(class_names)})")


def _prompt(subject: str, relation_class: str, obj: str) -> str:
    return f"A {subject} {PROMPT_PHRASE[canonical_class(relation_class)]} a {obj}"


def training_prompts(subject: str, relation: str, obj: str, rng: random.Random,
                     class_names: Sequence[str] = PUBLISHED_CLASSES, dual: bool = True) -> list[TrainingPrompt]:
    """The ``pos`` (and, when ``dual``, ``neg``) prompts of one labelled sample (reference §5.4).

    Spatial sample (``subject`` ``relation`` ``obj``): pos "A {subject} {relation} a {obj}",
    neg the same with a relation drawn uniformly (from ``rng``) among the *other* classes,
    "is" included ("A dog is a cat"). Neutral sample (``relation`` "is": ``subject`` a noun,
    ``obj`` its attribute): pos "A {attribute} {noun}", neg "A {attribute} {wrong} a {noun}";
    maps are recorded for (noun, attribute). Every prompt carries the true class as its label.
    """
    label = _class_name_for(relation, class_names)
    prompts = []
    if canonical_class(label) == NEUTRAL:
        noun, attribute = subject, obj
        prompts.append(TrainingPrompt(f"A {attribute} {noun}", "pos", label, label, noun, attribute))
    else:
        prompts.append(TrainingPrompt(_prompt(subject, label, obj), "pos", label, label, subject, obj))
    if dual:
        wrong = rng.choice(sorted(name for name in class_names if name != label))
        if canonical_class(label) == NEUTRAL:
            prompts.append(TrainingPrompt(_prompt(attribute, wrong, noun), "neg", wrong, label, noun, attribute))
        else:
            prompts.append(TrainingPrompt(_prompt(subject, wrong, obj), "neg", wrong, label, subject, obj))
    return prompts


@dataclass
class DualRecord:
    """One prompt of a dual inversion and what it recorded (maps of one (subject, object) pair)."""

    prompt: TrainingPrompt
    result: InversionResult


def dual_invert(pipe, image: Image.Image, subject: str, relation: str, obj: str, *, seed: int,
                class_names: Sequence[str] = PUBLISHED_CLASSES, dual: bool = True,
                rng: random.Random | None = None, **inversion_kwargs) -> list[DualRecord]:
    """Invert one labelled image with its pos prompt and (``dual``) a wrong-relation neg prompt.

    Both inversions use the same ``seed`` (same VAE sample and inversion noise), so the prompt is
    the only difference between them. The wrong relation is drawn from ``rng`` (default: seeded
    from ``seed``). ``inversion_kwargs`` go to :func:`invert_and_capture`.
    """
    rng = rng if rng is not None else random.Random(seed)
    records = []
    for spec in training_prompts(subject, relation, obj, rng, class_names, dual):
        result = invert_and_capture(pipe, image, spec.prompt, [(spec.subject, spec.object)], seed=seed,
                                    **inversion_kwargs)
        records.append(DualRecord(spec, result))
    return records
