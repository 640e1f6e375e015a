"""Stable Diffusion UNet cross-attention processors that also record token-selected maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from l2s.errors import L2SError

from .recording import CaptureProcessorMixin, CaptureState, MapSpec, explicit_group_maps


def unet_downsamplings(unet: UNet2DConditionModel, name: str) -> int:
    """Number of stride-2 downsamplings between the latent and the layer ``name`` of ``unet``."""
    stage, *rest = name.split(".")
    total = sum(getattr(block, "downsamplers", None) is not None for block in unet.down_blocks)
    if stage == "mid_block":
        return total
    index = int(rest[0])
    if stage == "down_blocks":
        return sum(getattr(block, "downsamplers", None) is not None for block in unet.down_blocks[:index])
    if stage == "up_blocks":
        return total - sum(getattr(block, "upsamplers", None) is not None for block in unet.up_blocks[:index])
    raise L2SError(f"cannot place UNet layer {name} in the down/mid/up structure")


class CrossAttentionCaptureProcessor(CaptureProcessorMixin):
    """Drop-in for diffusers' ``AttnProcessor2_0`` (or ``FusedAttnProcessor2_0``) on UNet cross-attention
    that also records maps.

    The maps are the model's own cross-attention probabilities (softmax over the text tokens, same
    scale and mask), averaged over each group's tokens. Every batch element is captured, so with a
    CFG batch both halves appear; the steering forward is meant to run the conditional branch only.
    """

    def __init__(self, layer: str, state: CaptureState, downsamplings: int, fused: bool = False) -> None:
        self._init_capture(layer, state, downsamplings)
        # Replacing FusedAttnProcessor2_0 (after ``fuse_qkv_projections``): project as it does. Not
        # ``attn.fused_projections``: unfusing restores the plain processor but leaves that flag set.
        self._fused = fused

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        # Same steps as diffusers' AttnProcessor2_0 (its deprecated `scale` argument is ignored there too).
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross_attention = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = self._projections(attn, hidden_states, encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self._attend(query, key, value, attention_mask, is_cross_attention)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def _projections(
        self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value ``[B, S, inner]`` as the replaced processor makes them: fused, from the
        ``to_qkv`` (self-attention) or ``to_kv`` (cross-attention) copies ``fuse_projections`` made."""
        if self._fused and encoder_hidden_states is None:
            return attn.to_qkv(hidden_states).chunk(3, dim=-1)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if self._fused:
            return (query, *attn.to_kv(encoder_hidden_states).chunk(2, dim=-1))
        return query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)

    def _check_text_len(self, spec: MapSpec, key: torch.Tensor) -> None:
        if key.shape[2] != spec.text_len:
            raise L2SError(
                f"layer {self.layer}: the model got {key.shape[2]} text tokens but recording() was given "
                f"text_len={spec.text_len}"
            )

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        is_cross_attention: bool,
    ) -> torch.Tensor:
        """Attention on ``[B, H, S, D]`` as the stock processor, plus the maps."""
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        spec, captured = self._map_request()
        if spec is not None and is_cross_attention:
            self._check_text_len(spec, key)
            self._store(spec, captured, self._selected_maps(spec, query, key, attn_mask=attention_mask))
        return hidden_states


class CrossAttentionExplicitReferenceProcessor(CrossAttentionCaptureProcessor):
    """The published SD processor: explicit attention probabilities, maps read from them."""

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        is_cross_attention: bool,
    ) -> torch.Tensor:
        scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5  # SDPA's default scale, as the model
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            else:
                scores = scores + attention_mask
        probs = scores.softmax(dim=-1)
        hidden_states = probs @ value
        spec, captured = self._map_request()
        if spec is not None and is_cross_attention:
            self._check_text_len(spec, key)
            self._store(spec, captured, explicit_group_maps(probs, spec.groups))
        return hidden_states
