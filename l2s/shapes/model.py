"""A tiny FLUX-architecture text-to-image model of the shapes world.

To show that steering improves spatial accuracy where no real FLUX or Stable Diffusion weights
are at hand, l2s trains its own small model of :mod:`l2s.shapes` scenes
(:mod:`.trainer`). It is an ordinary diffusers :class:`~diffusers.FluxPipeline`, so generation,
attention capture, classification and steering run through exactly the same code as real FLUX:

* ``transformer``: :class:`~diffusers.FluxTransformer2DModel` (a few double/single blocks, no
  guidance embedding, like schnell), trained by rectified flow.
* ``text_encoder_2`` / ``tokenizer_2``: a small T5 encoder trained jointly from scratch, with a
  word-level vocabulary of the shapes world (:mod:`.tokenizer`). :class:`ShapesT5EncoderModel`
  reads a fixed window of :data:`TEXT_WINDOW` tokens whatever the pipeline's
  ``max_sequence_length``.
* ``text_encoder`` / ``tokenizer``: a tiny CLIP text model whose pooled output is a constant
  (final layer norm with zero gain), so the prompt reaches the image only through attention to the
  T5 tokens: the path the relation classifier reads.
* ``vae``: :class:`PixelShuffleVAE`, an exact, parameter-free pixel <-> latent map (space-to-depth
  by ``vae_factor``, 2 by default). FLUX then packs 2x2 latent patches, so a 32x32 image is an 8x8
  grid of 4x4-pixel tokens (16x16 of 2x2 pixels at factor 1, the shipped model).
* ``scheduler``: :class:`~diffusers.FlowMatchEulerDiscreteScheduler` with schnell's settings
  (shift 1, no dynamic shifting), so the sampler's sigmas are ``linspace(1, 1/steps, steps)``.
  The model is not step-distilled: sample it with :data:`l2s.shapes.settings.SHAPES_STEPS` steps.

Loading: ``save_pretrained`` records the VAE and T5 encoder as ``["l2s.shapes.model", ...]`` in
``model_index.json`` (the module that defines them, so they must stay here); diffusers resolves
such custom classes from ``sys.modules``, so ``FluxPipeline.from_pretrained(dir)`` works once this
module is imported (it never imports a module just because a model folder names it).
:func:`load_shapes_pipeline` does both.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    ModelMixin,  # noqa: F401  (diffusers' loader looks the base classes up in this module)
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedModel,  # noqa: F401  (same reason as ModelMixin)
    T5Config,
    T5EncoderModel,
)

from l2s.devices import check_device
from l2s.errors import ModelLoadError, TokenizationError
from l2s.pipelines.families import model_kind, pixels_per_token
from l2s.pipelines.loading import steering_defaults
from l2s.tokenizers import byte_level_clip_tokenizer

from .configs import ShapesModelConfig
from .settings import SHAPES_FAMILY, SHAPES_MODEL_NAME, SHAPES_STEP_SIZE, SHAPES_STEPS, SHAPES_TRUE_CFG
from .tokenizer import TEXT_WINDOW, shapes_t5_tokenizer

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "assets"


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """An exact, parameter-free "autoencoder": space-to-depth of the pixels (no learning, no loss).

    ``encode`` maps an image in [-1, 1] of shape (B, 3, H, W) to (B, 3·f², H/f, W/f) by
    :func:`torch.nn.functional.pixel_unshuffle` with ``f = downscale_factor``; ``decode`` inverts
    it exactly. It offers the parts of :class:`~diffusers.AutoencoderKL`'s interface that
    :class:`~diffusers.FluxPipeline` uses: ``config.block_out_channels`` (its length sets the
    pipeline's ``vae_scale_factor = f``), ``config.latent_channels``, ``config.scaling_factor`` and
    ``config.shift_factor`` (latents are ``(encode(x) - shift) * scale``, decoded as
    ``decode(z / scale + shift)``), ``encode(x).latent_dist.sample()/mode()`` and
    ``decode(z, return_dict=False)[0]``. ``sample_size`` is the image side the model was trained
    at, as in ``AutoencoderKL``'s config (folders saved before it existed load with 32).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, downscale_factor: int = 2, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, block_out_channels: Sequence[int] | None = None,
                 latent_channels: int | None = None, sample_size: int = 32) -> None:
        super().__init__()
        levels = int(math.log2(downscale_factor))
        if downscale_factor < 1 or 2**levels != downscale_factor:
            raise ValueError(f"downscale_factor must be a power of two, got {downscale_factor}")
        # FluxPipeline derives vae_scale_factor = 2 ** (len(block_out_channels) - 1).
        expected = tuple(in_channels * 4**k for k in range(levels + 1))
        if block_out_channels is not None and len(block_out_channels) != levels + 1:
            raise ValueError(f"block_out_channels must have {levels + 1} entries for factor {downscale_factor}")
        self.register_to_config(block_out_channels=tuple(block_out_channels or expected),
                                latent_channels=in_channels * downscale_factor**2)
        # A parameter-free module has no dtype/device; this one-element buffer carries them
        # through .to() for ModelMixin.dtype / .device.
        self.register_buffer("dtype_anchor", torch.zeros(1), persistent=True)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latent = F.pixel_unshuffle(x, self.config.downscale_factor)
        # Deterministic distribution: sample() and mode() both return the latent exactly.
        dist = DiagonalGaussianDistribution(torch.cat([latent, torch.zeros_like(latent)], dim=1),
                                            deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        image = F.pixel_shuffle(z, self.config.downscale_factor)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)


class ShapesT5EncoderModel(T5EncoderModel):
    """A T5 encoder that always reads exactly ``config.text_window`` tokens.

    Real FLUX pads prompts to ``max_sequence_length`` (512) and attends to every padding token.
    A shapes prompt needs far fewer tokens, so this small model was trained on a fixed 32-token
    window rather than on mostly padding: padding beyond the window is dropped and shorter inputs are
    padded, so any ``max_sequence_length`` gives the same embeddings (``(B, text_window, d)``).
    The pipeline sizes its text ids from these embeddings, so attention maps have ``text_window``
    text keys. A prompt with more real tokens than the window raises :class:`TokenizationError`.
    """

    def fit_window(self, ids: torch.Tensor, fill: int) -> torch.Tensor:
        window = int(getattr(self.config, "text_window", TEXT_WINDOW))
        length = ids.shape[1]
        if length > window:
            overflow = ids[:, window:]
            if (overflow != self.config.pad_token_id).any() and fill == self.config.pad_token_id:
                used = int((ids != self.config.pad_token_id).sum(dim=1).max())
                raise TokenizationError(f"the prompt needs {used} T5 tokens; the shapes model reads at most {window}")
            return ids[:, :window]
        if length < window:
            return F.pad(ids, (0, window - length), value=fill)
        return ids

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any):
        if input_ids is not None:
            input_ids = self.fit_window(input_ids, self.config.pad_token_id)
        if attention_mask is not None:
            attention_mask = self.fit_window(attention_mask, 0)
        return super().forward(input_ids, attention_mask, *args, **kwargs)


def _seeded_module(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _t5_encoder(config: ShapesModelConfig, vocab_size: int, seed: int) -> ShapesT5EncoderModel:
    t5_config = T5Config(
        vocab_size=vocab_size, d_model=config.text_dim, d_kv=config.text_dim // config.text_heads,
        d_ff=config.text_ff, num_layers=config.text_layers, num_heads=config.text_heads,
        relative_attention_num_buckets=16, relative_attention_max_distance=config.text_window,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, text_window=config.text_window,
    )
    return _seeded_module(seed, lambda: ShapesT5EncoderModel(t5_config))


def _constant_clip_encoder(config: ShapesModelConfig, tokenizer, seed: int) -> CLIPTextModel:
    """A CLIP text model whose pooled output is a seeded constant (final layer norm with zero gain)."""
    start, end = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.clip_dim, intermediate_size=2 * config.clip_dim,
        num_hidden_layers=config.clip_layers, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=start, eos_token_id=end, pad_token_id=end, projection_dim=config.clip_dim,
    )
    text_encoder = _seeded_module(seed, lambda: CLIPTextModel(clip_config))
    with torch.no_grad():  # constant pooled output: the prompt must go through T5 attention
        final_norm = text_encoder.get_submodule("final_layer_norm")  # transformers 5 layout
        final_norm.weight.zero_()
        final_norm.bias.copy_(_seeded_module(seed + 1, lambda: torch.randn(config.clip_dim)))
    return text_encoder


def _transformer(config: ShapesModelConfig, seed: int) -> FluxTransformer2DModel:
    return _seeded_module(seed, lambda: FluxTransformer2DModel(
        patch_size=1,
        in_channels=3 * config.vae_factor**2 * 4,  # 2x2 packing of the space-to-depth latent
        num_layers=config.double_layers,
        num_single_layers=config.single_layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.text_dim,
        pooled_projection_dim=config.clip_dim,
        guidance_embeds=False,
        axes_dims_rope=list(config.rope_axes),
    ))


def build_shapes_pipeline(config: ShapesModelConfig = ShapesModelConfig(), seed: int = 0) -> FluxPipeline:
    """A freshly initialised (untrained) shapes-world :class:`~diffusers.FluxPipeline`."""
    if sum(config.rope_axes) != config.head_dim:
        raise ValueError(f"rope_axes {config.rope_axes} must sum to head_dim {config.head_dim}")
    tokenizer_2 = shapes_t5_tokenizer()
    text_encoder_2 = _t5_encoder(config, len(tokenizer_2), seed)
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = _constant_clip_encoder(config, tokenizer, seed + 1)
    transformer = _transformer(config, seed + 3)
    vae = PixelShuffleVAE(downscale_factor=config.vae_factor, scaling_factor=config.latent_scale,
                          shift_factor=config.latent_shift, sample_size=config.image_size)
    # schnell's scheduler: no resolution-dependent shift, sigmas = linspace(1, 1/steps, steps).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(),
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2,
                        transformer=transformer.eval())


def load_shapes_pipeline(path: str | Path | None = None, device: str | torch.device | None = None,
                         torch_dtype: torch.dtype | None = None) -> FluxPipeline:
    """Load a saved shapes-world pipeline (default: the model shipped in ``l2s/shapes/assets``).

    Plain ``FluxPipeline.from_pretrained(path)`` works too once :mod:`l2s.shapes.model` is imported
    (diffusers finds the custom VAE and T5 classes in ``sys.modules``); this also never goes online.
    """
    path = Path(path) if path is not None else SHIPPED_MODEL_DIR
    if device is not None:
        check_device(device)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"no shapes-world pipeline at {path} (model_index.json missing); "
                             "train one with `l2s shapes train-model --out DIR`")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    # FluxPipeline's signature names AutoencoderKL, so diffusers warns about PixelShuffleVAE on every
    # load; that is expected here, so only that logger is quietened, only while loading.
    pipeline_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)
    try:
        pipe = FluxPipeline.from_pretrained(str(path), **kwargs)
    finally:
        pipeline_logger.setLevel(level)
    return pipe.to(device) if device is not None else pipe


@model_kind(SHAPES_MODEL_NAME)   # what its map datasets, and the classifiers trained on them, record
def is_shapes_pipeline(pipe) -> bool:
    """Whether ``pipe`` is a shapes-world model (its VAE is the parameter-free pixel map)."""
    return isinstance(getattr(pipe, "vae", None), PixelShuffleVAE)


@steering_defaults
def _shapes_steering_defaults(pipe) -> dict | None:
    """How a shapes model is sampled and steered when wrapped without options (its training size,
    steps, guidance, the published multi-step rule and the shapes world's step size)."""
    if not is_shapes_pipeline(pipe):
        return None
    return dict(family=SHAPES_FAMILY, steps=SHAPES_STEPS, size=image_size(pipe), true_cfg_scale=SHAPES_TRUE_CFG,
                step_size=SHAPES_STEP_SIZE)


def image_size(pipe) -> int:
    """The image side a shapes model was trained at (its VAE config's ``sample_size``)."""
    return int(pipe.vae.config.sample_size)


def token_grid(pipe) -> int:
    """Side of the model's token grid at its :func:`image_size`: FLUX packs 2x2 latents per token."""
    return image_size(pipe) // pixels_per_token(pipe)


def images_to_latents(pipe: FluxPipeline, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) images -> packed FLUX latents (B, tokens, channels), as img2img does."""
    pixels = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = pipe.vae.encode(pixels).latent_dist.mode()
    latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)
