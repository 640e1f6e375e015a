"""The FLUX.1-dev architecture with random weights in a stock diffusers ``FluxPipeline``.

The transformer is FLUX.1-dev's (19 double + 38 single blocks, 24 heads x 128, joint attention
dim 4096, pooled 768, guidance embedding: ~12 B parameters, ~24 GB in bf16), built directly on the
device in the benchmark dtype (an fp32 copy first would need 48 GB and a second pass). Text
encoders (a 1-layer T5 of width 4096, a 1-layer CLIP of width 768) and the VAE (16 latent channels,
4 blocks, so 512 px is a 32x32 token grid) are tiny stand-ins with the real interfaces; they stay
outside every timed region.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from l2s.demo import (
    CLIP_VOCAB_SIZE,
    T5_VOCAB_SIZE,
    tiny_clip_tokenizer,
    tiny_t5_tokenizer,
)


@dataclass(frozen=True)
class Architecture:
    """A FLUX-dev-shaped pipeline: transformer config, stand-in encoder/VAE sizes, classifier sizes."""

    name: str
    transformer: dict
    t5: dict
    clip: dict
    vae_channels: tuple[int, ...]           # 4 blocks: VAE scale factor 8, as FLUX's VAE
    classifier_overrides: dict = field(default_factory=dict)   # on top of preset("flux-dev")
    max_sequence_length: int = 512

    @property
    def heads(self) -> int:
        return self.transformer["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.transformer["attention_head_dim"]

    @property
    def layers(self) -> int:
        return self.transformer["num_layers"] + self.transformer["num_single_layers"]


FLUX_DEV = Architecture(
    name="FLUX.1-dev",
    # FluxTransformer2DModel's defaults are FLUX.1-dev's config; spelled out so the table is honest.
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                     attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                     pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    # Only the output widths matter (T5: 4096 per token, CLIP pooled: 768): one narrow layer each.
    t5=dict(d_model=4096, d_ff=256, d_kv=64, num_heads=2, num_layers=1),
    clip=dict(hidden_size=768, projection_dim=768, intermediate_size=256, num_attention_heads=2,
              num_hidden_layers=1),
    vae_channels=(8, 8, 8, 8),
)

TINY = Architecture(
    name="tiny FLUX-dev-shaped",
    transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                     pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
    t5=dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1),
    clip=dict(hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
              num_hidden_layers=1),
    vae_channels=(4, 4, 4, 4),
    classifier_overrides=dict(d_model=32, extractor_layers=1, extractor_heads=2, extractor_ff=64,
                              pool_heads=2, head_layers=1, head_heads=2, head_ff=64, fc_dims=(32, 16)),
    max_sequence_length=64,
)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(arch: Architecture, device: torch.device, dtype: torch.dtype):
    """The random transformer, initialised where it runs and in the dtype it runs in."""
    from diffusers import FluxTransformer2DModel

    with torch.device(device), default_dtype(dtype):
        return FluxTransformer2DModel(**arch.transformer).eval().requires_grad_(False)


def build_flux_pipeline(arch: Architecture, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A diffusers ``FluxPipeline`` with ``arch``'s random transformer and tiny stand-in encoders/VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = build_transformer(arch, device, dtype)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=T5_VOCAB_SIZE, feed_forward_proj="relu", relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **arch.t5)).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_act="gelu", **arch.clip)).eval()
    blocks = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=arch.vae_channels,
        layers_per_block=1, latent_channels=arch.transformer["in_channels"] // 4,
        norm_num_groups=arch.vae_channels[0], use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False, shift_factor=0.1159, scaling_factor=0.3611).eval()
    # FLUX.1-dev's scheduler config (dynamic shifting by image size).
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2,
                        tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    return pipe.to(device, dtype)
