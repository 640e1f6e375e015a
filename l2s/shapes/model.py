"""A tiny FLUX-architecture text-to-image model of the shapes world, trained here in stages.

No real FLUX or Stable Diffusion weights can be downloaded in this environment, so to show that
steering improves spatial accuracy l2s trains its own small model of :mod:`l2s.shapes` scenes. It
is an ordinary diffusers :class:`~diffusers.FluxPipeline`, so generation, attention capture,
classification and steering run through exactly the same code as real FLUX:

* ``transformer``: :class:`~diffusers.FluxTransformer2DModel` (a few double/single blocks, no
  guidance embedding, like schnell), trained by rectified flow.
* ``text_encoder_2`` / ``tokenizer_2``: a small T5 encoder trained jointly from scratch, with a
  word-level vocabulary of the shapes world (one token per colour, shape and relation word).
  :class:`ShapesT5EncoderModel` reads a fixed window of :data:`TEXT_WINDOW` tokens whatever the
  pipeline's ``max_sequence_length`` (see its docstring).
* ``text_encoder`` / ``tokenizer``: a tiny CLIP text model whose pooled output is a constant
  (final layer norm with zero gain), so the prompt reaches the image only through attention to the
  T5 tokens: the path the relation classifier reads.
* ``vae``: :class:`PixelShuffleVAE`, an exact, parameter-free pixel <-> latent map (space-to-depth
  by ``vae_factor``, 2 by default). FLUX then packs 2x2 latent patches, so a 32x32 image is an 8x8
  grid of 4x4-pixel tokens (16x16 of 2x2 pixels at factor 1, the shipped model).
* ``scheduler``: :class:`~diffusers.FlowMatchEulerDiscreteScheduler` with schnell's settings
  (shift 1, no dynamic shifting), so the sampler's sigmas are ``linspace(1, 1/steps, steps)``.
  The model is not step-distilled: sample it with ~12 steps (``l2s.shapes.world.SHAPES_STEPS``).

Training captions name every object ("a red circle, a blue square and a green triangle") but
state a relation only rarely (``--relation-caption-rate``), so, like real models, the model draws
the named objects but places them largely regardless of the relation words.

Loading: ``save_pretrained`` records the VAE and T5 encoder as ``["l2s.shapes.model", ...]`` in
``model_index.json``; diffusers resolves such custom classes from ``sys.modules``, so
``FluxPipeline.from_pretrained(dir)`` works once this module is imported (it never imports a
module just because a model folder names it). :func:`load_shapes_pipeline` does both.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    T5TokenizerFast,
)

from l2s.errors import L2SError, ModelLoadError, TokenizationError
from l2s.relations import NON_DIRECTIONAL, PROMPT_PHRASE, PUBLISHED_CLASSES
from l2s.demo import sentencepiece_t5_tokenizer, tiny_clip_tokenizer

# T5 tokens the model reads: the longest shapes caption ("a photo of a red circle to the left of
# a blue square. a green triangle and a yellow diamond") is 23 tokens with </s>.
TEXT_WINDOW = 32
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "assets"

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

# Relation phrasings of the benchmarks (GenEval, T2I-CompBench) and of l2s.relations, so that
# evaluation prompts tokenise to whole words even when training never used them.
_RELATION_PHRASES = (
    "to the left of", "to the right of", "left of", "right of", "above", "below",
    "on the left of", "on the right of", "on the top of", "on the bottom of", "on top of",
    "under", "over", "beneath", "top left bottom right", "top-left top-right bottom-left bottom-right",
    "next to", "near", "on side of", "beside", "by", "is", "are", "in front of", "behind",
)
_PROMPT_WORDS = "a an the and of photo picture image with there one two three four five"
_PUNCTUATION = ". , ; : ! ? ' \" - ( ) /"
_CAPITALISED = ("a", "an", "the", "one", "two", "there", "photo")
# Unigram log-probabilities: a known word always beats spelling it out.
_WORD_SCORE, _SPACE_SCORE, _CHAR_SCORE = -8.0, -10.0, -12.0


def shapes_vocabulary() -> list[str]:
    """Whole words of the shapes T5 tokenizer, in id order (after ``<pad>``, ``</s>``, ``<unk>``)."""
    from .scenes import COLOURS, SHAPES

    phrases = list(_RELATION_PHRASES) + list(NON_DIRECTIONAL) + list(PUBLISHED_CLASSES)
    phrases += list(PROMPT_PHRASE.values())
    words = list(SHAPES) + list(COLOURS) + _PROMPT_WORDS.split()
    words += [w for phrase in phrases for w in phrase.split()]
    words += [str(d) for d in range(10)] + _PUNCTUATION.split()
    return list(dict.fromkeys(words))


def shapes_t5_tokenizer() -> T5TokenizerFast:
    """The word-level T5 tokenizer of the shapes world (sentencepiece-style, reloads offline).

    Every vocabulary word is one ``▁word`` piece; unknown words are spelled as ``▁`` + characters
    (so no prompt fails to tokenise), anything else is ``<unk>``. Appends ``</s>`` like T5.
    """
    import string

    pieces: dict[str, float] = {"▁": _SPACE_SCORE}
    for word in shapes_vocabulary() + [w.capitalize() for w in _CAPITALISED]:
        pieces.setdefault("▁" + word, _WORD_SCORE)
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces.setdefault(char, _CHAR_SCORE)
    return sentencepiece_t5_tokenizer(pieces, extra_ids=0)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


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
    Training this small model on 512-token sequences would cost ~6x more than on 32, so it was
    trained on a fixed 32-token window: padding beyond the window is dropped and shorter inputs are
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


@dataclass
class ShapesModelConfig:
    """Sizes of the shapes-world model (defaults: the shipped model)."""

    image_size: int = 32
    vae_factor: int = 2           # space-to-depth; FLUX packs 2x2 more -> tokens of 4x4 pixels
    num_heads: int = 4
    head_dim: int = 32            # transformer width = num_heads * head_dim
    double_layers: int = 2
    single_layers: int = 3
    rope_axes: tuple[int, int, int] = (8, 12, 12)   # sums to head_dim; axis 0 is FLUX's unused id
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    text_window: int = TEXT_WINDOW
    clip_dim: int = 32
    clip_layers: int = 1
    # Pixels in [-1, 1] are mostly background (0.92; data mean 0.74, std 0.46): centre and scale
    # them to about unit variance, as the FLUX VAE's shift/scale factors do for its latents.
    latent_shift: float = 0.74
    latent_scale: float = 2.15

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesModelConfig:
        data = dict(data)
        data["rope_axes"] = tuple(data["rope_axes"])
        return cls(**data)


def rope_axes_for(head_dim: int) -> tuple[int, int, int]:
    """RoPE split of a head: FLUX's unused first axis gets the remainder, rows and columns ~3/8 each."""
    side = max(2, round(3 * head_dim / 16) * 2)
    if head_dim - 2 * side < 2 or head_dim % 2:
        raise L2SError(f"head dimension {head_dim} is too small or odd for FLUX's 3-axis RoPE")
    return (head_dim - 2 * side, side, side)


# Presets for tests (tiny) and the default trained model.
TINY_CONFIG = ShapesModelConfig(num_heads=2, head_dim=16, double_layers=1, single_layers=1,
                                rope_axes=(4, 4, 8), text_dim=32, text_layers=1, text_heads=2,
                                text_ff=32, clip_dim=16, clip_layers=1)


def _seeded_module(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_shapes_pipeline(config: ShapesModelConfig = ShapesModelConfig(), seed: int = 0) -> FluxPipeline:
    """A freshly initialised (untrained) shapes-world :class:`~diffusers.FluxPipeline`."""
    if sum(config.rope_axes) != config.head_dim:
        raise ValueError(f"rope_axes {config.rope_axes} must sum to head_dim {config.head_dim}")
    tokenizer_2 = shapes_t5_tokenizer()
    t5_config = T5Config(
        vocab_size=len(tokenizer_2), d_model=config.text_dim, d_kv=config.text_dim // config.text_heads,
        d_ff=config.text_ff, num_layers=config.text_layers, num_heads=config.text_heads,
        relative_attention_num_buckets=16, relative_attention_max_distance=config.text_window,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, text_window=config.text_window,
    )
    text_encoder_2 = _seeded_module(seed, lambda: ShapesT5EncoderModel(t5_config))

    tokenizer = tiny_clip_tokenizer()
    start, end = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.clip_dim, intermediate_size=2 * config.clip_dim,
        num_hidden_layers=config.clip_layers, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=start, eos_token_id=end, pad_token_id=end, projection_dim=config.clip_dim,
    )
    text_encoder = _seeded_module(seed + 1, lambda: CLIPTextModel(clip_config))
    with torch.no_grad():  # constant pooled output: the prompt must go through T5 attention
        final_norm = text_encoder.get_submodule("final_layer_norm")  # transformers 5 layout
        final_norm.weight.zero_()
        final_norm.bias.copy_(
            _seeded_module(seed + 2, lambda: torch.randn(config.clip_dim)))

    transformer = _seeded_module(seed + 3, lambda: FluxTransformer2DModel(
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


def is_shapes_pipeline(pipe) -> bool:
    """Whether ``pipe`` is a shapes-world model (its VAE is the parameter-free pixel map)."""
    return isinstance(getattr(pipe, "vae", None), PixelShuffleVAE)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class SceneDataset:
    """Pre-rendered scenes: uint8 images (N, H, W, 3), captions and T5 token ids (N, window)."""

    images: torch.Tensor
    captions: list[str]
    token_ids: torch.Tensor
    scenes: list[dict]
    relation_stated: torch.Tensor


def scene_caption(scene, rng: np.random.Generator, relation_caption_rate: float) -> tuple[str, bool]:
    """A training caption: all objects by colour and shape; a relation with probability ``rate``
    (a random clean one of the scene, when it has any)."""
    clean = scene.relations()
    if clean and rng.random() < relation_caption_rate:
        return scene.caption(mention_relation=True, relation=clean[int(rng.integers(len(clean)))]), True
    return scene.caption(), False


def tokenize_t5(tokenizer: T5TokenizerFast, captions: Sequence[str], window: int = TEXT_WINDOW) -> torch.Tensor:
    """T5 ids exactly as FluxPipeline makes them (padded to ``window``), erroring on overflow."""
    ids = tokenizer(list(captions), padding="max_length", max_length=window, truncation=False,
                    return_tensors="pt").input_ids
    if ids.shape[1] > window:
        raise TokenizationError(f"a caption needs {ids.shape[1]} T5 tokens; the window is {window}")
    return ids


def render_dataset(count: int, seed: int, size: int, relation_caption_rate: float,
                   n_objects: tuple[int, int], object_sizes: tuple[int, int],
                   window: int = TEXT_WINDOW) -> SceneDataset:
    """Render ``count`` seeded random scenes of :mod:`l2s.shapes` with their captions."""
    from tqdm.auto import tqdm

    from .scenes import random_scene, render_array

    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions, scenes, stated = [], [], []
    for k in tqdm(range(count), desc="rendering scenes", leave=False, mininterval=2):
        scene = random_scene(rng, size=size, n_objects=n_objects, min_size=object_sizes[0],
                             max_size=object_sizes[1])
        images[k] = render_array(scene)
        caption, has_relation = scene_caption(scene, rng, relation_caption_rate)
        captions.append(caption)
        stated.append(has_relation)
        scenes.append(scene.to_dict())
    token_ids = tokenize_t5(shapes_t5_tokenizer(), captions, window)
    return SceneDataset(torch.from_numpy(images), captions, token_ids, scenes, torch.tensor(stated))


def load_or_render_dataset(cache_dir: Path, **kwargs: Any) -> SceneDataset:
    """:func:`render_dataset`, cached as a ``.pt`` file named after its settings."""
    key = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items())).replace(" ", "").replace(",", "_")
    path = cache_dir / f"scenes-{key}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return SceneDataset(data["images"], data["captions"], data["token_ids"],
                            json.loads(data["scenes"]), data["relation_stated"])
    dataset = render_dataset(**kwargs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save({"images": dataset.images, "captions": dataset.captions, "token_ids": dataset.token_ids,
                  "scenes": json.dumps(dataset.scenes), "relation_stated": dataset.relation_stated}, path)
    return dataset


def images_to_latents(pipe: FluxPipeline, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) images -> packed FLUX latents (B, tokens, channels), as img2img does."""
    pixels = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = pipe.vae.encode(pixels).latent_dist.mode()
    latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Everything that determines a training run (stored in checkpoints and training.json)."""

    steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    sigma_sampling: str = "logit-normal"
    seed: int = 0
    scenes: int = 40000
    size: int = 32
    n_objects: tuple[int, int] = (2, 4)
    object_sizes: tuple[int, int] = (8, 12)
    relation_caption_rate: float = 0.15
    checkpoint_every: int = 250
    init_from: str | None = None  # a shapes pipeline folder whose weights start the run
    grow: bool = False  # init_from may have fewer blocks: append the missing ones as identities
    repatch: bool = False  # init_from may have another vae_factor: fresh patch embedding and output
    model: dict = field(default_factory=lambda: asdict(ShapesModelConfig()))

    def run_identity(self) -> dict:
        """Settings that must match to resume a run (the step count may grow)."""
        data = asdict(self)
        for key in ("steps", "checkpoint_every"):
            data.pop(key)
        return json.loads(json.dumps(data))


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak at the last step."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    floor = settings.final_lr_fraction
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_sigmas(kind: str, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal(0, 1) (SD3's choice) or uniform."""
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(count, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(count, generator=generator, device=device)
    raise L2SError(f"unknown sigma sampling {kind!r} (logit-normal or uniform)")


class ShapesTrainer:
    """Rectified-flow training of a shapes pipeline's transformer and T5 encoder.

    Conventions match FluxPipeline's sampler: ``x_t = (1 - σ) x0 + σ ε`` and the transformer,
    given ``timestep=σ`` (the pipeline passes ``t / 1000`` with ``t = 1000 σ``), predicts the
    velocity ``ε - x0``; the Euler scheduler steps ``x += (σ_next - σ) v``.
    """

    def __init__(self, settings: TrainSettings, dataset: SceneDataset, device: str = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.dataset = dataset
        model_config = ShapesModelConfig.from_dict(settings.model)
        self.pipe = build_shapes_pipeline(model_config, seed=settings.seed).to(self.device)
        self.trained = {"transformer": self.pipe.transformer, "text_encoder_2": self.pipe.text_encoder_2}
        if settings.init_from:
            self._load_initial_weights(Path(settings.init_from))
        self.pipe.text_encoder.requires_grad_(False)
        self.ema = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                    for name, module in self.trained.items()}
        params = [p for module in self.trained.values() for p in module.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.99),
                                           weight_decay=settings.weight_decay)
        # One generator for batches, noise and sigmas: its state makes resumption exact.
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self.step = 0
        self.last_loss = float("nan")
        self.smoothed_loss: float | None = None  # running mean of the loss, kept across resumes
        self.elapsed = 0.0
        with torch.no_grad():  # constant pooled CLIP vector (see build_shapes_pipeline)
            self.pooled = self.pipe._get_clip_prompt_embeds([""], device=self.device)
        grid = model_config.image_size // (2 * model_config.vae_factor)
        self.image_ids = FluxPipeline._prepare_latent_image_ids(1, grid, grid, self.device, torch.float32)
        self.text_ids = torch.zeros(model_config.text_window, 3, device=self.device)

    def _load_initial_weights(self, folder: Path) -> None:
        """Start from a saved shapes pipeline (continued training); its architecture must match.

        The frozen CLIP encoder is loaded too: its constant pooled vector conditions every block, and
        a run with another seed would otherwise build a different one and start from scratch in effect.
        """
        loaders = {"transformer": FluxTransformer2DModel, "text_encoder_2": ShapesT5EncoderModel,
                   "text_encoder": CLIPTextModel}
        for name, cls in loaders.items():
            try:
                saved = cls.from_pretrained(str(folder / name), local_files_only=True)
                if name == "transformer" and self.settings.repatch:
                    repatch_transformer(self.pipe.transformer, saved)
                elif name == "transformer" and self.settings.grow:
                    grow_transformer(self.pipe.transformer, saved)
                else:
                    getattr(self.pipe, name).load_state_dict(saved.state_dict())
            except (OSError, ValueError, RuntimeError) as error:
                hint = ("" if self.settings.grow or self.settings.repatch else
                        "; --grow starts a deeper model from a shallower one, --repatch one with other patches")
                raise ModelLoadError(f"--init-from {folder}: cannot load {name} into this model config "
                                     f"({str(error).splitlines()[0]}){hint}") from None

    # -- one step ------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, token_ids: torch.Tensor, sigmas: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        x0 = images_to_latents(self.pipe, images.to(self.device))
        s = sigmas.view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        text = self.pipe.text_encoder_2(token_ids.to(self.device))[0]
        velocity = self.pipe.transformer(
            hidden_states=x_t, timestep=sigmas, pooled_projections=self.pooled.expand(len(x0), -1),
            encoder_hidden_states=text, txt_ids=self.text_ids, img_ids=self.image_ids, return_dict=False)[0]
        return F.mse_loss(velocity, noise - x0)

    def train_step(self) -> float:
        settings = self.settings
        for module in self.trained.values():
            module.train()
        index = torch.randint(len(self.dataset.images), (settings.batch_size,), generator=self.generator,
                              device=self.device).cpu()
        sigmas = sample_sigmas(settings.sigma_sampling, settings.batch_size, self.generator, self.device)
        grid_tokens = self.image_ids.shape[0]
        channels = self.pipe.transformer.config.in_channels
        noise = torch.randn(settings.batch_size, grid_tokens, channels, generator=self.generator,
                            device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(settings, self.step)
        loss = self.loss(self.dataset.images[index], self.dataset.token_ids[index], sigmas, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up form of the decay: early averages are not dominated by the random initialisation.
        decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))
        for name, module in self.trained.items():
            for key, value in module.state_dict().items():
                average = self.ema[name][key]
                if value.is_floating_point():
                    average.lerp_(value, 1 - decay)
                else:
                    average.copy_(value)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue bit-for-bit: tensors and primitives only."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "step": self.step, "last_loss": self.last_loss, "smoothed_loss": self.smoothed_loss,
            "elapsed": self.elapsed,
            "settings": json.dumps(self.settings.run_identity()),
            "weights": {name: module.state_dict() for name, module in self.trained.items()},
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
        }

    def save_checkpoint(self, path: Path) -> None:
        _atomic_save(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(state["settings"])
        stored.setdefault("grow", False)  # checkpoints from before --grow existed
        stored.setdefault("repatch", False)  # ... or --repatch
        if stored != self.settings.run_identity():
            raise L2SError(f"{path} was written by a run with other settings; use another --out "
                           "or --no-resume to start afresh")
        for name, module in self.trained.items():
            module.load_state_dict(state["weights"][name])
            for key, value in state["ema"][name].items():
                self.ema[name][key] = value.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.last_loss, self.elapsed = state["step"], state["last_loss"], state["elapsed"]
        self.smoothed_loss = state.get("smoothed_loss")  # absent in checkpoints of older versions

    # -- export --------------------------------------------------------------------------
    def ema_pipeline(self) -> FluxPipeline:
        """The pipeline with EMA weights (on CPU, eval mode), ready to save or sample."""
        model_config = ShapesModelConfig.from_dict(self.settings.model)
        pipe = build_shapes_pipeline(model_config, seed=self.settings.seed)
        pipe.transformer.load_state_dict(self.ema["transformer"])
        pipe.text_encoder_2.load_state_dict(self.ema["text_encoder_2"])
        # The frozen CLIP encoder trained with (from --init-from, or built from the seed).
        pipe.text_encoder.load_state_dict(self.pipe.text_encoder.state_dict())
        return pipe


def grow_transformer(target: FluxTransformer2DModel, saved: FluxTransformer2DModel) -> None:
    """Load ``saved`` into the deeper ``target`` so that ``target`` computes exactly what ``saved`` does.

    The saved blocks become the first blocks of each stack; every further block keeps its fresh
    weights but has its residual gates zeroed (adaLN-Zero, as DiT initialises every block), so it
    adds nothing until training opens its gates. Width and every other setting must match.
    """
    stacks = ("transformer_blocks", "single_transformer_blocks")
    for stack in stacks:
        have, want = len(getattr(saved, stack)), len(getattr(target, stack))
        if have > want:
            raise ValueError(f"cannot grow {stack} from {have} to {want} blocks (only deeper)")
    missing, unexpected = target.load_state_dict(saved.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"saved weights do not fit this model: {sorted(unexpected)[:3]}")
    new_prefixes = tuple(f"{stack}.{i}." for stack in stacks
                         for i in range(len(getattr(saved, stack)), len(getattr(target, stack))))
    stray = [key for key in missing if not key.startswith(new_prefixes)]
    if stray:
        raise ValueError(f"saved weights lack {sorted(stray)[:3]}")
    for stack in stacks:
        for block in list(getattr(target, stack))[len(getattr(saved, stack)):]:
            norms = [block.norm] if stack == "single_transformer_blocks" else [block.norm1, block.norm1_context]
            for norm in norms:
                _close_residual_gates(norm.linear)


# What a token is made of: the only weights whose shapes depend on the patch (vae_factor).
PATCH_WEIGHTS = ("x_embedder.", "proj_out.")


def repatch_transformer(target: FluxTransformer2DModel, saved: FluxTransformer2DModel) -> None:
    """Load ``saved`` into ``target`` except the patch embedding and output projection.

    For a model whose tokens cover fewer pixels (a smaller ``vae_factor``): the blocks, timestep
    and text embeddings carry over; ``x_embedder`` and ``proj_out`` keep their fresh weights, the
    output projection zeroed (as DiT starts it) so the run starts from a constant velocity instead
    of noise through trained blocks. Width, depth and every other setting must match.
    """
    weights = {k: v for k, v in saved.state_dict().items() if not k.startswith(PATCH_WEIGHTS)}
    missing, unexpected = target.load_state_dict(weights, strict=False)
    stray = [key for key in missing if not key.startswith(PATCH_WEIGHTS)]
    if unexpected or stray:
        raise ValueError(f"saved weights do not fit this model apart from its patches: "
                         f"{sorted(unexpected + stray)[:3]}")
    with torch.no_grad():
        target.proj_out.weight.zero_()
        target.proj_out.bias.zero_()


@torch.no_grad()
def _close_residual_gates(modulation: torch.nn.Linear) -> None:
    """Zero the gate rows of an adaLN modulation: its output is (shift, scale, gate) per branch."""
    width = modulation.in_features  # the conditioning width = the model width
    for gate in range(2, modulation.out_features // width, 3):
        rows = slice(gate * width, (gate + 1) * width)
        modulation.weight[rows] = 0
        modulation.bias[rows] = 0


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never corrupts ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(settings: TrainSettings, out: Path, device: str = "cpu", resume: bool = True,
          progress: bool = True, command: str | None = None, stop_at_step: int | None = None,
          time_limit_s: float | None = None) -> ShapesTrainer:
    """Train (or continue training) into ``out``; export the EMA pipeline to ``out / "pipeline"``.

    ``out`` holds ``checkpoint.pt`` (latest state), the scene cache and, at the end, ``pipeline/``
    (diffusers format, safetensors) with ``training.json`` and ``TRAINING.md`` beside the weights.
    ``stop_at_step`` ends this invocation early as an interruption would: the checkpoint is saved
    (a later call resumes exactly) and nothing is exported. ``time_limit_s`` also stops early but
    exports the EMA weights reached so far (``training.json`` says ``"completed": false``); running
    the same command again resumes and finishes the run.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    torch.manual_seed(settings.seed)
    dataset = load_or_render_dataset(out, count=settings.scenes, seed=settings.seed, size=settings.size,
                                     relation_caption_rate=settings.relation_caption_rate,
                                     n_objects=tuple(settings.n_objects),
                                     object_sizes=tuple(settings.object_sizes),
                                     window=settings.model["text_window"])
    trainer = ShapesTrainer(settings, dataset, device)
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        trainer.load_checkpoint(checkpoint)
    bar = tqdm(total=settings.steps, initial=trainer.step, desc="training", disable=not progress,
               mininterval=5, dynamic_ncols=True)
    started_run = time.monotonic()
    while trainer.step < settings.steps:
        if stop_at_step is not None and trainer.step >= stop_at_step:
            trainer.save_checkpoint(checkpoint)
            bar.close()
            return trainer
        if time_limit_s is not None and time.monotonic() - started_run > time_limit_s:
            trainer.save_checkpoint(checkpoint)
            break
        started = time.perf_counter()
        loss = trainer.train_step()
        trainer.elapsed += time.perf_counter() - started
        previous = trainer.smoothed_loss
        trainer.smoothed_loss = loss if previous is None else 0.98 * previous + 0.02 * loss
        bar.update()
        bar.set_postfix(loss=f"{trainer.smoothed_loss:.4f}", lr=f"{learning_rate(settings, trainer.step - 1):.2e}",
                        refresh=False)
        if trainer.step % settings.checkpoint_every == 0 or trainer.step == settings.steps:
            trainer.save_checkpoint(checkpoint)
    bar.close()
    export(trainer, out / "pipeline", device=device, command=command)
    return trainer


def export(trainer: ShapesTrainer, directory: Path, device: str, command: str | None) -> Path:
    """Save the EMA pipeline (safetensors) plus ``training.json`` and ``TRAINING.md``."""
    import diffusers
    import transformers

    from .world import SHAPES_STEPS  # the sampling settings live with the rest of the world's

    pipe = trainer.ema_pipeline()
    pipe.save_pretrained(directory, safe_serialization=True)
    settings = trainer.settings
    params = sum(p.numel() for m in trainer.trained.values() for p in m.parameters())
    record = {
        "command": command,
        "seed": settings.seed,
        "steps": trainer.step,
        "planned_steps": settings.steps,
        "completed": trainer.step >= settings.steps,
        "final_loss": trainer.last_loss,
        "final_loss_smoothed": trainer.smoothed_loss,
        "wall_time_s": round(trainer.elapsed, 1),
        "device": device,
        "trained_parameters": params,
        "settings": asdict(settings),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "sampling": {"height": settings.size, "width": settings.size, "num_inference_steps": SHAPES_STEPS,
                     "guidance_scale": "ignored (no guidance embedding)",
                     "text_window": settings.model["text_window"]},
    }
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (directory / "TRAINING.md").write_text(_training_markdown(record))
    return directory


def _training_markdown(record: dict) -> str:
    s = record["settings"]
    continued = (f"\n- continued from the weights of `{s['init_from']}` (an earlier run's exported pipeline; "
                 "its own TRAINING.md/training.json say how it was made)") if s.get("init_from") else ""
    if s.get("grow"):
        continued += (f"; grown to {s['model']['double_layers']} double + {s['model']['single_layers']} single "
                      "blocks: its blocks first, each new block started as an identity (zero residual gates)")
    if s.get("repatch"):
        continued += (f"; re-patched to tokens of {2 * s['model']['vae_factor']}x{2 * s['model']['vae_factor']} "
                      "pixels: its blocks, text and timestep embeddings kept, a fresh patch embedding and a "
                      "zeroed output projection")
    origin = "continued from an earlier model (below)" if s.get("init_from") else "trained from scratch"
    return f"""# Shapes-world FLUX model

A FLUX-architecture text-to-image model of `l2s.shapes` scenes, {origin} by
`l2s.shapes.model` (rectified flow, EMA weights exported). Load it with
`l2s.shapes.model.load_shapes_pipeline(dir)` (or `FluxPipeline.from_pretrained(dir)` after
`import l2s.shapes.model`) and sample at {s['size']}x{s['size']} with 12 steps (it is not step-distilled: 4 steps leave blurry blobs).

- command: `{record['command']}`{continued}
- seed {record['seed']}, {record['steps']} steps (of {record['planned_steps']} planned) of batch {s['batch_size']}, lr {s['lr']} (warm-up
  {s['warmup']}, cosine to {s['final_lr_fraction']}x), AdamW wd {s['weight_decay']}, EMA {s['ema_decay']},
  sigma sampling {s['sigma_sampling']}
- data: {s['scenes']} scenes of {s['n_objects'][0]}-{s['n_objects'][1]} objects ({s['object_sizes'][0]}-{s['object_sizes'][1]} px), relation
  stated in {s['relation_caption_rate']:.0%} of captions
- final loss {record['final_loss']:.4f} (smoothed {record['final_loss_smoothed'] or float('nan'):.4f}),
  {record['trained_parameters']:,} trained parameters
- wall time {record['wall_time_s'] / 60:.1f} min on {record['device']}; torch {record['versions']['torch']},
  diffusers {record['versions']['diffusers']}
"""


def _parse_pair(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2s shapes train-model",
        description="Train the shapes-world FLUX model (rectified flow) and export it as a diffusers pipeline.")
    defaults = TrainSettings()
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoint, data cache, pipeline/)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--scenes", type=int, default=defaults.scenes, help="pre-rendered training scenes")
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument("--objects", type=_parse_pair, default=defaults.n_objects, metavar="LOW-HIGH",
                        help="objects per scene (default 2-4)")
    parser.add_argument("--object-sizes", type=_parse_pair, default=defaults.object_sizes, metavar="LOW-HIGH",
                        help="object side in pixels (default 8-12)")
    parser.add_argument("--relation-caption-rate", type=float, default=defaults.relation_caption_rate,
                        help="fraction of captions that state a relation (default 0.15)")
    parser.add_argument("--sigma-sampling", choices=("logit-normal", "uniform"), default=defaults.sigma_sampling)
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--preset", choices=("default", "tiny"), default="default",
                        help="model size (tiny: for tests); the options below override it")
    parser.add_argument("--heads", type=int, default=None, help="transformer attention heads")
    parser.add_argument("--head-dim", type=int, default=None, help="transformer head dimension")
    parser.add_argument("--double-layers", type=int, default=None, help="FLUX double-stream blocks")
    parser.add_argument("--single-layers", type=int, default=None, help="FLUX single-stream blocks")
    parser.add_argument("--vae-factor", type=int, default=None,
                        help="pixels per latent side (space-to-depth); FLUX packs 2x2 latents into a token, "
                             "so a token covers 2*F pixels a side (default 2)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/checkpoint.pt when present (default on)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="stop after this many minutes and export the weights so far; the same "
                             "command later resumes and completes the run")
    parser.add_argument("--final-lr-fraction", type=float, default=defaults.final_lr_fraction,
                        help="cosine decay target as a fraction of --lr (1 = constant after warm-up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="PIPELINE_DIR",
                        help="start from the transformer and T5 weights of a saved shapes pipeline "
                             "(continue a finished run with a new schedule); same model options required")
    parser.add_argument("--grow", action="store_true",
                        help="with --init-from: the new model may have more --double-layers/--single-layers; "
                             "the saved blocks come first and each new block starts as an identity")
    parser.add_argument("--repatch", action="store_true",
                        help="with --init-from: the new model may have another --vae-factor; everything but "
                             "the patch embedding and output projection is loaded")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    model = asdict(TINY_CONFIG if args.preset == "tiny" else ShapesModelConfig())
    overrides = {"num_heads": args.heads, "head_dim": args.head_dim, "double_layers": args.double_layers,
                 "single_layers": args.single_layers, "vae_factor": args.vae_factor}
    model.update({k: v for k, v in overrides.items() if v is not None}, image_size=args.size)
    if args.head_dim is not None:
        model["rope_axes"] = rope_axes_for(args.head_dim)
    model = ShapesModelConfig.from_dict(model)
    if args.size % (2 * model.vae_factor):
        raise L2SError(f"--size must be a multiple of {2 * model.vae_factor}")
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         scenes=args.scenes, size=args.size, n_objects=tuple(args.objects),
                         object_sizes=tuple(args.object_sizes),
                         relation_caption_rate=args.relation_caption_rate, sigma_sampling=args.sigma_sampling,
                         ema_decay=args.ema_decay, warmup=args.warmup, checkpoint_every=args.checkpoint_every,
                         final_lr_fraction=args.final_lr_fraction,
                         init_from=str(args.init_from.resolve()) if args.init_from else None,
                         grow=args.grow, repatch=args.repatch,
                         model=asdict(model))


def train_model_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes train-model``: train (resuming by default) and export the pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_arg_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise L2SError("--device cuda but torch.cuda.is_available() is False")
    if args.grow and args.init_from is None:
        raise L2SError("--grow needs --init-from (the shallower pipeline to grow)")
    if args.repatch and args.init_from is None:
        raise L2SError("--repatch needs --init-from (the pipeline whose blocks start the run)")
    if args.repatch and args.grow:
        raise L2SError("--repatch and --grow cannot be combined (grow first, or repatch first)")
    settings = settings_from_args(args)
    command = "l2s shapes train-model " + " ".join(shlex.quote(a) for a in argv)
    trainer = train(settings, args.out, device=args.device, resume=args.resume,
                    progress=not args.no_progress, command=command,
                    time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    status = "" if trainer.step >= settings.steps else f" of {settings.steps} (time limit; rerun to resume)"
    print(f"trained {trainer.step} steps{status}, loss {trainer.last_loss:.4f}; pipeline in {args.out / 'pipeline'}")
    return 0


if __name__ == "__main__":
    # Run through the importable module: classes defined in ``__main__`` would be recorded as
    # ["__main__", ...] in model_index.json and could not be loaded again.
    from .model import train_model_main as _main

    raise SystemExit(_main())
