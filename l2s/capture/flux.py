"""FLUX attention processors that also record token-selected maps: fast path and explicit reference."""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from l2s.errors import L2SError

from .recording import CaptureProcessorMixin, CaptureState, MapSpec, explicit_group_maps


class FluxCaptureProcessor(CaptureProcessorMixin):
    """Drop-in for diffusers' ``FluxAttnProcessor`` that also records token-selected maps.

    The model output goes through the stock code path (``dispatch_attention_fn``), so it is
    bit-identical to ``FluxAttnProcessor``. The maps ignore any attention mask: the published maps
    include T5 padding positions in the text softmax.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, layer: str, state: CaptureState, original: FluxAttnProcessor) -> None:
        self._init_capture(layer, state, downsamplings=0)
        # Keep a backend chosen with ``model.set_attention_backend`` before the capture was installed.
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # Same steps as diffusers' FluxAttnProcessor: projections, q/k RMSNorm, text first, RoPE.
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # Double blocks know the text length; single blocks get cat(text, image): recording() tells it.
        model_text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else None
        hidden_states = self._attend(query, key, value, attention_mask, model_text_len)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _text_len(self, spec: MapSpec, model_text_len: int | None, seq_len: int) -> int:
        if model_text_len is not None and model_text_len != spec.text_len:
            raise L2SError(
                f"layer {self.layer}: the model got {model_text_len} text tokens but recording() was given "
                f"text_len={spec.text_len}"
            )
        if spec.text_len >= seq_len:
            raise L2SError(f"layer {self.layer}: text_len={spec.text_len} leaves no image tokens in {seq_len}")
        return spec.text_len

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        model_text_len: int | None,
    ) -> torch.Tensor:
        """Joint attention on ``[B, S, H, D]`` (text first) as the stock processor, plus the maps."""
        # Maps first: a forward cut after this layer stops inside _record_maps, before the joint
        # attention, which nothing downstream of the maps needs.
        self._record_maps(query, key, model_text_len)
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )

    # Per-layer bookkeeping (layer name, request, early stop) stays out of compiled blocks, so one
    # compiled block serves every layer (see l2s.steer's "fast+compiled" mode).
    @torch.compiler.disable
    def _record_maps(self, query: torch.Tensor, key: torch.Tensor, model_text_len: int | None) -> None:
        spec, captured = self._map_request()
        if spec is not None:
            text_len = self._text_len(spec, model_text_len, query.shape[1])
            image_query = query[:, text_len:].transpose(1, 2)
            text_key = key[:, :text_len].transpose(1, 2)
            self._store(spec, captured, self._selected_maps(spec, image_query, text_key))


class FluxExplicitReferenceProcessor(FluxCaptureProcessor):
    """The published FLUX processor: explicit joint logits, explicit softmax, maps sliced from logits.

    Materialises ``heads × S × S`` logits and probabilities per layer (S = text + image tokens).
    """

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        model_text_len: int | None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise L2SError("the explicit reference FLUX processor does not support attention masks")
        query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))  # [B, H, S, D]
        logits = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        hidden_states = (logits.softmax(dim=-1) @ value).transpose(1, 2)
        spec, captured = self._map_request()
        if spec is not None:
            text_len = self._text_len(spec, model_text_len, query.shape[2])
            # Image queries × text keys, softmaxed over the text keys only (not the joint softmax).
            text_probs = logits[:, :, text_len:, :text_len].softmax(dim=-1)
            self._store(spec, captured, explicit_group_maps(text_probs, spec.groups))
        return hidden_states
