"""Tiny random diffusion pipelines for tests and offline CLI runs.

Every component is built in code (so tests and demos run offline) from the small
configurations diffusers' own tests use (tokenizers by :mod:`l2s.tokenizers`). The pipelines
produce noise, but their shapes, attention layout and tokenisation behave like the real FLUX /
Stable Diffusion ones, which is all that capture, steering and the CLI need to be exercised end to end.

Sizes to remember:
  * FLUX: the one-block VAE does not downsample (scale factor 1) and FLUX packs 2x2 latent patches,
    so an HxW image gives an (H/2)x(W/2) token grid: 32x32 -> 16x16 maps (schnell-like),
    64x64 -> 32x32 maps (dev-like). Height and width must be even.
  * SD: the two-block VAE downsamples 2x and the UNet has cross-attention at two resolutions:
    a 64x64 image gives 32x32 latents and cross-attention maps of 32x32 and 16x16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from l2s.evaluation import COCO_CLASSES as GENEVAL_COCO_CLASSES  # one home for the list
from l2s.tokenizers import byte_level_clip_tokenizer, word_t5_tokenizer

# The tiny T5 encoder's embedding table; the tokenizer (words + 100 sentinel ids) must fit inside.
T5_VOCAB_SIZE = 1103
CLIP_VOCAB_SIZE = 1000

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def tiny_clip_tokenizer(merges: list[tuple[str, str]] | None = None) -> CLIPTokenizer:
    """The tiny pipelines' character-level CLIP tokenizer (:func:`l2s.tokenizers.byte_level_clip_tokenizer`),
    sized for their CLIP text model: at most :data:`CLIP_VOCAB_SIZE` tokens with ``merges``."""
    return byte_level_clip_tokenizer(merges, max_vocab_size=CLIP_VOCAB_SIZE)


# The 80 COCO class names as GenEval spells them ("computer mouse", "tv remote", ...): their words
# also cover COCO's own short names.
COCO_CLASSES: tuple[str, ...] = GENEVAL_COCO_CLASSES

RELATION_WORDS = (
    "left right of to the on top bottom above below under over beneath underneath behind front "
    "next near side beside by between inside outside in at with and same is are up down across "
    "along against around middle center centre corner back into onto upper lower far close "
    "diagonal diagonally placed positioned located sitting standing lying"
)
COLOUR_WORDS = (
    "red orange yellow green blue purple pink brown black white gray grey silver gold beige cyan "
    "magenta violet teal navy maroon turquoise colorful colourful striped dotted"
)
SHAPE_WORDS = (
    "circle square triangle star rectangle hexagon pentagon octagon diamond heart oval ellipse "
    "cross cube sphere cone cylinder pyramid ring disk disc dot line shape shapes circles squares "
    "triangles stars rectangles"
)
NUMBER_WORDS = (
    "0 1 2 3 4 5 6 7 8 9 one two three four five six seven eight nine ten zero single pair "
    "couple several many few some"
)
COMMON_PROMPT_WORDS = (
    "a an the this that these those there here it its their his her of for from as or but not no "
    "photo photograph image picture painting drawing render rendering illustration sketch scene "
    "view background foreground style realistic photorealistic high quality detailed sharp "
    "bright dark small large big tiny huge little tall short long old new young other another "
    "each both only very wooden metal plastic glass stone shiny soft round flat empty full "
    "man woman child boy girl people kid baby table room street road grass sky water beach field "
    "park city house building tree trees flower flowers mountain river snow sand floor wall "
    "window door kitchen garden forest lake sea ocean desert shelf box ball toy lamp plate mug "
    "hat shoe bag basket pillow sofa desk computer phone screen cloud sun moon light fire sign "
    "plant ball glass bat glove meter hydrant drier racket stands sits lies is was be has have "
    "looking next made wearing holding standing floating flying lying"
)
PUNCTUATION = ". , ; : ! ? ' \" - ( ) / &"

# Plurals that the simple suffix rule below gets wrong.
_IRREGULAR_PLURALS = {
    "person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
    "scissors": "scissors", "bus": "buses", "bench": "benches", "couch": "couches",
    "sandwich": "sandwiches", "glass": "glasses", "toothbrush": "toothbrushes", "tv": "tvs",
    "broccoli": "broccoli",
}  # fmt: skip


def _plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def tiny_t5_word_list() -> list[str]:
    """The whole words of the tiny T5 vocabulary, in id order (COCO class words and their plurals,
    relation/position words, colours, shapes, numbers, common prompt words, punctuation)."""
    coco_words = [w for name in COCO_CLASSES for w in name.split()]
    coco_plurals = [_plural(name.split()[-1]) for name in COCO_CLASSES]
    groups = [PUNCTUATION, NUMBER_WORDS, RELATION_WORDS, COLOUR_WORDS, SHAPE_WORDS, COMMON_PROMPT_WORDS]
    words = [w for group in groups for w in group.split()] + coco_words + coco_plurals
    return list(dict.fromkeys(words))  # de-duplicate, keep the first (deterministic) order


# Sentence starters that also get a capitalised piece (T5 is case-sensitive).
_CAPITALISED = ("a", "an", "the", "one", "two", "three", "this", "there", "photo", "it")


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """The tiny FLUX pipeline's T5 tokenizer: whole-word pieces for prompt vocabulary.

    Every word of :func:`tiny_t5_word_list` is one ``▁word`` piece (a few sentence starters also
    capitalised); other words are spelled out as ``▁`` + single characters (ASCII letters, digits,
    punctuation), and anything else is ``<unk>``. With T5's 100 sentinel tokens the vocabulary
    stays below the tiny encoder's 1103 embeddings. ``model_max_length`` 512.
    """
    tokenizer = word_t5_tokenizer(tiny_t5_word_list(), _CAPITALISED)
    if len(tokenizer) > T5_VOCAB_SIZE:
        raise AssertionError(f"tiny T5 vocabulary {len(tokenizer)} exceeds {T5_VOCAB_SIZE}")
    return tokenizer


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed weight initialisation without disturbing the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_clip_text_model(seed: int = 0) -> CLIPTextModel:
    """A 5-layer, 32-wide CLIP text encoder (diffusers' test config; bos 0 / eos 2 / pad 1)."""
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,  # legacy value: pooling takes the arg-max id, i.e. <|endoftext|>
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=32,
    )
    with _seeded(seed):
        return CLIPTextModel(config).eval()


def tiny_t5_encoder(seed: int = 0) -> T5EncoderModel:
    """A 5-layer, 32-wide T5 encoder (the local equivalent of hf-internal-testing/tiny-random-t5)."""
    config = T5Config(
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=5,
        relative_attention_num_buckets=8,
        vocab_size=T5_VOCAB_SIZE,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        return T5EncoderModel(config).eval()


def tiny_flux_pipeline(
    num_layers: int = 1,
    num_single_layers: int = 1,
    seed: int = 0,
    guidance_embeds: bool = False,
):
    """A tiny random :class:`diffusers.FluxPipeline`.

    ``guidance_embeds=False`` is schnell-like, ``True`` dev-like (guidance enters through an
    embedding). Two attention heads of dimension 16 per block; the joint sequence puts the T5
    tokens first. Image sides must be even: an HxW image is an (H/2)x(W/2) token grid.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,  # = 4 * latent_channels: FLUX packs 2x2 latent patches into channels
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],  # must sum to attention_head_dim
            guidance_embeds=guidance_embeds,
        )
    with _seeded(seed):
        vae = AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(4,),
            layers_per_block=1,
            latent_channels=1,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=tiny_clip_text_model(seed),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(seed),
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer.eval(),
    )


def tiny_sd_pipeline(seed: int = 0):
    """A tiny random :class:`diffusers.StableDiffusionPipeline` (no safety checker).

    The UNet has cross-attention (``attn2``, two heads) at both of its resolutions — 7 layers:
    down 1 + 1, mid 1, up 2 + 2 — over the 77 CLIP tokens. The VAE downsamples 2x, so a 64x64
    image has 32x32 latents and 32x32 / 16x16 attention maps.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,  # the CLIP text encoder's hidden size
            attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
            norm_num_groups=2,
        )
    with _seeded(seed):
        vae = AutoencoderKL(
            block_out_channels=(4, 8),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=2,
            sample_size=64,
        )
    # Stable Diffusion's noise schedule.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=tiny_clip_text_model(seed),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_classifier_config(channels: int, timesteps: tuple[int, ...] = (1, 3), num_timesteps: int = 4,
                           orig_map_size: int | None = 16):
    """A small relation classifier (same architecture, narrow) for tiny pipelines and unit tests."""
    from l2s.classifier import ClassifierConfig

    return ClassifierConfig(
        channels=channels, timesteps=timesteps, num_timesteps=num_timesteps,
        orig_map_size=orig_map_size, d_model=32, extractor_layers=1, extractor_heads=2,
        extractor_ff=64, pool_heads=2, head_layers=1, head_heads=2, head_ff=64, fc_dims=(32, 16),
        model_family="custom")


def tiny_classifier_for(pipe, seed: int = 0, **config_overrides):
    """A randomly initialised tiny classifier whose channel count fits ``pipe``'s denoiser."""
    from l2s.capture import AttentionCapture
    from l2s.classifier import RelationClassifier
    from l2s.pipelines.families import denoiser

    capture = AttentionCapture(denoiser(pipe))
    try:
        channels = capture.channels()
    finally:
        capture.remove()
    with _seeded(seed):
        return RelationClassifier(tiny_classifier_config(channels, **config_overrides)).eval()
