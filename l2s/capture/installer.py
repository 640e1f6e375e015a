"""Differentiable capture of token-selected cross-attention maps (FLUX and Stable Diffusion UNets).

What is captured (SPEC §2): for every captured attention layer, the image-query × text-key attention
probabilities, softmaxed over the text keys only, averaged over the tokens of each object phrase
("group"), kept per head: one ``(B, heads, N_img, G)`` tensor per layer that stays in the autograd
graph, so a loss on the maps can be differentiated w.r.t. the latent.

Two ways to compute the same maps:

* :class:`AttentionCapture` (the fast path). The model's own attention keeps running through fused
  SDPA exactly like the stock diffusers processors. While :meth:`AttentionCapture.recording` is
  active, each layer makes one extra SDPA call whose value matrix is a ``(T, G)`` *selector* holding
  ``1/n_g`` on the tokens of group ``g``: ``softmax_T(q_img k_txtᵀ / √d) @ S`` is exactly the
  token-averaged text-softmax map, and the fused kernels' standard backward gives exact gradients
  without ever keeping a ``heads × N_img × T`` probability tensor (performance note §2.3).
* :class:`ExplicitAttentionReference` (the published "reference mode"). Materialises the full
  attention logits, computes the model output with an explicit softmax and slices the maps out of
  the logits, as the official implementation does. Slow and memory-hungry; used to validate and
  benchmark the fast path.

Turning maps into the classifier's ``(B, 2, C, 16, 16)`` input is :meth:`CapturedMaps.classifier_input`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor, _get_qkv_projections
from torch.nn.attention import SDPBackend, sdpa_kernel

from l2s.errors import L2SError, TokenizationError

__all__ = [
    "AttentionCapture",
    "CapturedMaps",
    "ExplicitAttentionReference",
    "LayerMaps",
    "resize_maps_for_classifier",
    "selected_text_attention",
    "token_group_selector",
]

# Renormalisation epsilon of the published resize step (official-implementation.md §1.3).
_RENORM_EPS = 1e-8

# Rank of each top-level module in the forward pass; names are sorted by (rank, block indices).
_STAGE_RANK = {
    "transformer_blocks": 0,  # FLUX double-stream blocks run first ...
    "single_transformer_blocks": 1,  # ... then the single-stream blocks.
    "down_blocks": 0,  # UNet: down, mid, up.
    "mid_block": 1,
    "up_blocks": 2,
}


# --------------------------------------------------------------------------------------------
# Selector maths
# --------------------------------------------------------------------------------------------


def token_group_selector(
    groups: Sequence[Sequence[int]],
    text_len: int,
    width: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Build the ``(text_len, width)`` selector matrix: column ``g`` holds ``1/n_g`` on group ``g``'s tokens.

    ``width`` (default ``len(groups)``) pads with zero columns, which some SDPA kernels need.
    """
    width = len(groups) if width is None else width
    if width < len(groups):
        raise ValueError(f"selector width {width} < number of groups {len(groups)}")
    selector = torch.zeros(text_len, width, device=device, dtype=dtype)
    for column, tokens in enumerate(groups):
        selector[list(tokens), column] = 1.0 / len(tokens)
    return selector


CAPTURE_BACKENDS = ("sdpa", "native")


def _selector_width(num_groups: int, head_dim: int, device: torch.device, backend: str = "sdpa") -> int:
    """Value width that lets a fused SDPA kernel (not the math backend) compute the maps.

    CUDA's memory-efficient kernel accepts a value head dim different from q/k's, in multiples of 8.
    On CPU the only fused kernel (flash) needs value dim == q/k dim, so the selector is padded to the
    head dim there; with a narrower value, torch falls back to the math backend, which keeps the full
    probability tensor for backward.
    """
    if device.type == "cuda":
        return max(8, -(-num_groups // 8) * 8)
    if backend == "native":                      # l2s_fast's CPU kernel: no padding needed
        return num_groups
    return max(head_dim, num_groups)


def _map_attention(backend: str, query, text_key, selector, attn_mask=None) -> torch.Tensor:
    """The maps through the chosen backend: fused SDPA with a selector value, or l2s.ops' kernel."""
    if backend == "native":
        from l2s.ops import selected_text_attention as native

        return native(query, text_key, selector, attn_mask=attn_mask)
    return selected_text_attention(query, text_key, selector, attn_mask=attn_mask)


def selected_text_attention(
    query: torch.Tensor,
    text_key: torch.Tensor,
    selector: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-averaged text-softmax attention maps ``softmax(q kᵀ/√d) @ selector`` via fused SDPA.

    Args:
        query: ``(B, H, N, D)`` image queries (after the model's norms and RoPE).
        text_key: ``(B, H, T, D)`` text keys.
        selector: ``(T, W)`` from :func:`token_group_selector` (``W`` may include zero padding).
        attn_mask: optional SDPA mask over the text keys (SD passes the model's own mask).

    Returns:
        ``(B, H, N, W)`` maps; the columns past the real groups are zero.
    """
    if text_key.shape[-2] != selector.shape[0]:
        # Checked here because torch's CPU flash kernel silently accepts keys longer than values.
        raise ValueError(f"{text_key.shape[-2]} text keys but a selector over {selector.shape[0]} tokens")
    batch, heads, _, _ = query.shape
    value = selector.to(dtype=query.dtype).expand(batch, heads, *selector.shape)
    if not query.is_cuda:
        return F.scaled_dot_product_attention(query, text_key, value, attn_mask=attn_mask)
    # cuDNN's SDPA backward failed on H100 (SPEC §8) and flash rejects value dim != q/k dim: force the
    # memory-efficient kernel (math only as a fallback). A contiguous value (tiny: B·H·T·8) avoids
    # relying on the kernel accepting stride-0 batch/head dims.
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(query, text_key, value.contiguous(), attn_mask=attn_mask)


def _explicit_group_maps(text_probs: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, H, N, T)`` text probabilities -> ``(B, H, N, G)`` by averaging each group's columns."""
    return torch.stack([text_probs[..., list(tokens)].mean(dim=-1) for tokens in groups], dim=-1)


def _in_autograd_backward() -> bool:
    """True while autograd's engine runs a backward pass (e.g. a gradient-checkpoint recompute)."""
    return torch._C._current_graph_task_id() != -1


# --------------------------------------------------------------------------------------------
# Captured maps and their conversion to classifier input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerMaps:
    """One layer's maps: ``maps`` is ``(B, heads, N_img, G)``, ``grid`` the ``(h, w)`` of its N_img."""

    name: str
    maps: torch.Tensor
    grid: tuple[int, int]

    @property
    def heads(self) -> int:
        return self.maps.shape[1]


def resize_maps_for_classifier(
    per_layer: Sequence[tuple[torch.Tensor, tuple[int, int]]], map_size: int
) -> torch.Tensor:
    """Group maps by resolution and bring them to ``map_size`` exactly as the published code does.

    Args:
        per_layer: ``(maps, grid)`` per layer in execution order, ``maps`` shaped ``(..., H, h, w)``.
        map_size: the classifier's square map side.

    Returns:
        ``(..., C, map_size, map_size)`` float32, resolutions in ascending order (execution order
        within one resolution), channel = layer-major then head. A single resolution already equal to
        ``map_size`` is passed through untouched (FLUX-schnell: no renormalisation); otherwise every
        map is bilinearly resized (``align_corners=False``, no antialias) and renormalised to sum 1.
    """
    by_grid: dict[tuple[int, int], list[torch.Tensor]] = {}
    for maps, grid in per_layer:
        by_grid.setdefault(tuple(grid), []).append(maps.float())
    grids = sorted(by_grid, key=lambda hw: (hw[0] * hw[1], hw))
    stacks = [torch.cat(by_grid[grid], dim=-3) for grid in grids]
    if len(grids) == 1 and grids[0] == (map_size, map_size):
        return stacks[0]
    resized = []
    for stack in stacks:
        lead, (channels, height, width) = stack.shape[:-3], stack.shape[-3:]
        flat = stack.reshape(-1, channels, height, width)
        flat = F.interpolate(flat, size=(map_size, map_size), mode="bilinear", align_corners=False, antialias=False)
        flat = flat / (flat.sum(dim=(-2, -1), keepdim=True) + _RENORM_EPS)
        resized.append(flat.reshape(*lead, channels, map_size, map_size))
    return torch.cat(resized, dim=-3)


class CapturedMaps:
    """The maps recorded by one :meth:`AttentionCapture.recording` block (latest forward pass)."""

    def __init__(self, groups: Sequence[Sequence[int]], text_len: int) -> None:
        self.groups: tuple[tuple[int, ...], ...] = tuple(tuple(tokens) for tokens in groups)
        self.text_len = text_len
        self.layers: list[LayerMaps] = []

    def record(self, name: str, maps: torch.Tensor, grid: tuple[int, int]) -> None:
        """Append one layer's maps. A layer that is already present starts a new forward pass, so
        the maps always describe the most recent forward (no stale graphs piling up in a loop)."""
        if any(layer.name == name for layer in self.layers):
            self.clear()
        self.layers.append(LayerMaps(name, maps, grid))

    def clear(self) -> None:
        """Drop every recorded map (and with it the autograd graph it holds)."""
        self.layers = []

    def classifier_input(self, subject: int, obj: int, map_size: int = 16) -> torch.Tensor:
        """The relation classifier's input for groups ``subject`` and ``obj``.

        Returns:
            ``(B, 2, C, map_size, map_size)`` float32; index 0 is ``subject``, 1 is ``obj``; channels
            as in :func:`resize_maps_for_classifier`. Differentiable w.r.t. the recorded latent.
        """
        if not self.layers:
            raise L2SError("no attention maps were recorded: run the model inside AttentionCapture.recording()")
        for group in (subject, obj):
            if not 0 <= group < len(self.groups):
                raise L2SError(f"group index {group} out of range: {len(self.groups)} token groups were recorded")
        per_layer = []
        for layer in self.layers:
            batch, heads, _, _ = layer.maps.shape
            pair = layer.maps[..., [subject, obj]]  # (B, H, N, 2)
            pair = pair.permute(0, 3, 1, 2).reshape(batch, 2, heads, *layer.grid)
            per_layer.append((pair, layer.grid))
        return resize_maps_for_classifier(per_layer, map_size)


# --------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------


class _MapSpec:
    """What an active recording asks for: token groups, text length, full-resolution token grid."""

    def __init__(self, groups: tuple[tuple[int, ...], ...], text_len: int, latent_hw: tuple[int, int]) -> None:
        self.groups = groups
        self.text_len = text_len
        self.latent_hw = latent_hw
        self._selectors: dict[tuple, torch.Tensor] = {}

    def selector(self, head_dim: int, device: torch.device, dtype: torch.dtype,
                 backend: str = "sdpa") -> torch.Tensor:
        """The (padded) selector for this layer's device, dtype and head dim, built once per recording."""
        width = _selector_width(len(self.groups), head_dim, device, backend)
        cache_key = (width, device, dtype)
        if cache_key not in self._selectors:
            self._selectors[cache_key] = token_group_selector(
                self.groups, self.text_len, width, device=device, dtype=dtype
            )
        return self._selectors[cache_key]


class _CaptureState:
    """Shared by one capture's processors: what to record (None = plain forward) and where."""

    def __init__(self) -> None:
        self.spec: _MapSpec | None = None
        self.captured: CapturedMaps | None = None
        self.stop_after: str | None = None     # layer after which the forward is cut short
        self.backend = "sdpa"                  # how maps are computed: see CAPTURE_BACKENDS


class _ForwardStopped(Exception):
    """Raised after the last captured layer when the rest of the forward is not needed."""


def _downsampled_grid(latent_hw: tuple[int, int], downsamplings: int) -> tuple[int, int]:
    """Grid after ``downsamplings`` stride-2 convolutions (kernel 3, padding 1: ceil halving)."""
    height, width = latent_hw
    for _ in range(downsamplings):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


class _CaptureProcessorMixin:
    """Recording logic shared by the FLUX and UNet processors."""

    def _init_capture(self, layer: str, state: _CaptureState, downsamplings: int) -> None:
        self.layer = layer
        self._state = state
        self._downsamplings = downsamplings
        # The request this layer served in its latest forward. A non-reentrant gradient-checkpoint
        # recompute (run during backward) must redo exactly the same ops, since saved tensors are
        # matched by order; it computes the maps again but stores nothing.
        self._last_spec: _MapSpec | None = None

    def _map_request(self) -> tuple[_MapSpec | None, CapturedMaps | None]:
        """(spec to compute maps for or None, where to store them or None)."""
        if _in_autograd_backward():
            return self._last_spec, None
        self._last_spec = self._state.spec
        return self._state.spec, self._state.captured

    def _store(self, spec: _MapSpec, captured: CapturedMaps | None, maps: torch.Tensor) -> None:
        if captured is None:
            return
        num_image_tokens = maps.shape[2]
        height, width = _downsampled_grid(spec.latent_hw, self._downsamplings)
        if height * width != num_image_tokens:
            raise L2SError(
                f"layer {self.layer}: {num_image_tokens} image tokens do not match the {height}x{width} grid "
                f"derived from latent_hw={spec.latent_hw}"
            )
        captured.record(self.layer, maps, (height, width))
        if self._state.stop_after == self.layer:
            raise _ForwardStopped


class FluxCaptureProcessor(_CaptureProcessorMixin):
    """Drop-in for diffusers' ``FluxAttnProcessor`` that also records token-selected maps.

    The model output goes through the stock code path (``dispatch_attention_fn``), so it is
    bit-identical to ``FluxAttnProcessor``. The maps ignore any attention mask: the published maps
    include T5 padding positions in the text softmax (SPEC §2).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, layer: str, state: _CaptureState, original: FluxAttnProcessor) -> None:
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

    def _text_len(self, spec: _MapSpec, model_text_len: int | None, seq_len: int) -> int:
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
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        spec, captured = self._map_request()
        if spec is not None:
            text_len = self._text_len(spec, model_text_len, query.shape[1])
            image_query = query[:, text_len:].transpose(1, 2)
            text_key = key[:, :text_len].transpose(1, 2)
            backend = self._state.backend
            selector = spec.selector(query.shape[-1], query.device, query.dtype, backend)
            maps = _map_attention(backend, image_query, text_key, selector)[..., : len(spec.groups)]
            self._store(spec, captured, maps)
        return hidden_states


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
            self._store(spec, captured, _explicit_group_maps(text_probs, spec.groups))
        return hidden_states


class CrossAttentionCaptureProcessor(_CaptureProcessorMixin):
    """Drop-in for diffusers' ``AttnProcessor2_0`` on UNet cross-attention that also records maps.

    The maps are the model's own cross-attention probabilities (softmax over the text tokens, same
    scale and mask), averaged over each group's tokens. Every batch element is captured, so with a
    CFG batch both halves appear; the steering forward is meant to run the conditional branch only.
    """

    def __init__(self, layer: str, state: _CaptureState, downsamplings: int) -> None:
        self._init_capture(layer, state, downsamplings)

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

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

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

    def _check_text_len(self, spec: _MapSpec, key: torch.Tensor) -> None:
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
            backend = self._state.backend
            selector = spec.selector(query.shape[-1], query.device, query.dtype, backend)
            maps = _map_attention(backend, query, key, selector, attn_mask=attention_mask)[..., : len(spec.groups)]
            self._store(spec, captured, maps)
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
            self._store(spec, captured, _explicit_group_maps(probs, spec.groups))
        return hidden_states


# --------------------------------------------------------------------------------------------
# Installing the processors
# --------------------------------------------------------------------------------------------


def _execution_key(name: str) -> tuple:
    """Sort key giving the order in which a FLUX transformer or a UNet runs its attention layers."""
    parts = name.split(".")
    block_indices = tuple(int(part) for part in parts[1:] if part.isdigit())
    return _STAGE_RANK.get(parts[0], len(_STAGE_RANK)), block_indices, name


def _unet_downsamplings(unet: UNet2DConditionModel, name: str) -> int:
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


def _normalise_groups(groups: Sequence[Sequence[int]], text_len: int) -> tuple[tuple[int, ...], ...]:
    """Validate token groups; drop repeated indices so each token counts once in its group's mean."""
    if text_len <= 0:
        raise TokenizationError(f"text_len must be positive, got {text_len}")
    if len(groups) == 0:
        raise TokenizationError("no token groups given: each object phrase needs at least one token")
    normalised = []
    for number, tokens in enumerate(groups):
        tokens = tuple(dict.fromkeys(int(token) for token in tokens))
        if not tokens:
            raise TokenizationError(f"token group {number} is empty")
        outside = [token for token in tokens if not 0 <= token < text_len]
        if outside:
            raise TokenizationError(
                f"token group {number} has positions {outside} outside the text (length {text_len})"
            )
        normalised.append(tokens)
    return tuple(normalised)


class AttentionCapture:
    """Installs map-recording attention processors on a FLUX transformer or an SD UNet.

    FLUX: every ``FluxAttention`` (double blocks, then single blocks). UNet: every cross-attention
    (``attn2``) layer, in down, mid, up order. Outside :meth:`recording` the processors only do the
    model's own attention. Use as a context manager, or call :meth:`remove`.

    Example::

        with AttentionCapture(transformer) as capture:
            with capture.recording(groups=[[2], [6, 7]], text_len=512, latent_hw=(32, 32)) as maps:
                transformer(latents, ...)
            inputs = maps.classifier_input(subject=0, obj=1)   # (B, 2, 1368, 16, 16)
    """

    _flux_processor_cls: type[FluxCaptureProcessor] = FluxCaptureProcessor
    _unet_processor_cls: type[CrossAttentionCaptureProcessor] = CrossAttentionCaptureProcessor

    def __init__(
        self, model: FluxTransformer2DModel | UNet2DConditionModel, layers: Sequence[str] | None = None,
        backend: str = "sdpa",
    ) -> None:
        """Install capture processors on all capturable layers of ``model`` (or only ``layers``).

        Args:
            model: a diffusers ``FluxTransformer2DModel`` or ``UNet2DConditionModel``.
            layers: attention module names (``"transformer_blocks.0.attn"``; a trailing
                ``".processor"`` is accepted) to restrict the capture to.
            backend: "sdpa" (fused SDPA with the selector as value matrix; the default) or
                "native" (the ``l2s::selected_text_softmax`` op: Triton / CUDA / l2s_fast CPU).
                Both compute the same maps; which is faster depends on the device.
        """
        if backend not in CAPTURE_BACKENDS:
            raise L2SError(f"unknown capture backend {backend!r}; expected one of {CAPTURE_BACKENDS}")
        self.model = model
        self._state = _CaptureState()
        self._state.backend = backend
        candidates = self._capturable_layers(model)
        if layers is not None:
            wanted = [name.removesuffix(".processor") for name in layers]
            unknown = [name for name in wanted if name not in candidates]
            if unknown:
                raise L2SError(f"not capturable attention layers of {type(model).__name__}: {unknown}")
            candidates = {name: candidates[name] for name in wanted}
        if not candidates:
            raise L2SError(f"{type(model).__name__} has no attention layers to capture")
        self._modules = {name: candidates[name] for name in sorted(candidates, key=_execution_key)}

        processors = {}
        for name, module in self._modules.items():
            original = module.processor
            if isinstance(model, FluxTransformer2DModel):
                if not isinstance(original, FluxAttnProcessor):
                    raise L2SError(self._unsupported(name, original))
                processors[name] = self._flux_processor_cls(name, self._state, original)
            else:
                if not isinstance(original, (AttnProcessor2_0, AttnProcessor)):
                    raise L2SError(self._unsupported(name, original))
                processors[name] = self._unet_processor_cls(name, self._state, _unet_downsamplings(model, name))
        self._originals = {name: module.processor for name, module in self._modules.items()}
        self._downsamplings = {name: processor._downsamplings for name, processor in processors.items()}
        for name, module in self._modules.items():
            module.set_processor(processors[name])
        self._installed = True

    @staticmethod
    def _capturable_layers(model) -> dict[str, torch.nn.Module]:
        if isinstance(model, FluxTransformer2DModel):
            return {name: module for name, module in model.named_modules() if isinstance(module, FluxAttention)}
        if isinstance(model, UNet2DConditionModel):
            return {
                name: module
                for name, module in model.named_modules()
                if isinstance(module, Attention) and module.is_cross_attention and name.rsplit(".", 1)[-1] == "attn2"
            }
        raise L2SError(
            f"attention capture supports FluxTransformer2DModel and UNet2DConditionModel, not {type(model).__name__}"
        )

    @staticmethod
    def _unsupported(name: str, processor) -> str:
        if isinstance(processor, _CaptureProcessorMixin):
            return f"layer {name} already has a capture installed: remove() it first"
        return f"layer {name} uses {type(processor).__name__}; only the stock diffusers processors can be replaced"

    # ---- lifecycle -------------------------------------------------------------------------

    def remove(self) -> None:
        """Put the original processors back (idempotent)."""
        if not self._installed:
            return
        for name, module in self._modules.items():
            module.set_processor(self._originals[name])
        self._installed = False

    def __enter__(self) -> AttentionCapture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # ---- layout ----------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Captured attention module names in execution order."""
        return list(self._modules)

    def layer_layout(self, latent_hw: tuple[int, int]) -> list[tuple[str, int, tuple[int, int]]]:
        """``(name, heads, (h, w))`` per captured layer, for a full-resolution token grid ``latent_hw``.

        ``latent_hw`` is FLUX's packed token grid (``height // 16, width // 16``) or SD's latent size.
        """
        return [
            (name, module.heads, _downsampled_grid(tuple(latent_hw), self._downsamplings[name]))
            for name, module in self._modules.items()
        ]

    def channels(self) -> int:
        """Classifier channels per object: the sum of heads over the captured layers."""
        return sum(module.heads for module in self._modules.values())

    # ---- recording -------------------------------------------------------------------------

    @contextmanager
    def recording(
        self, groups: Sequence[Sequence[int]], text_len: int, latent_hw: tuple[int, int],
        stop_after_last: bool = False,
    ) -> Iterator[CapturedMaps]:
        """Record maps for ``groups`` during the forward passes run inside this block.

        Args:
            groups: token positions of each object phrase in the text sequence (its maps are the
                mean over these tokens).
            text_len: length of the text sequence the model sees (FLUX: padded T5 length; SD: 77).
            latent_hw: FLUX's packed token grid (``latent_h // 2, latent_w // 2``) or SD's latent
                ``(h, w)``; each UNet layer's grid follows from its downsampling.

        Yields:
            The :class:`CapturedMaps` being filled; it keeps the latest forward pass's maps (a new
            forward replaces them) and stays usable after the block ends. The maps keep their
            autograd graph; with gradient checkpointing, run backward before the next forward
            and before :meth:`remove` (the recompute must run the same processors).

        With ``stop_after_last`` the model's forward is cut short right after the last captured
        layer has recorded its maps (steering needs nothing later: the output head is not on the
        gradient path of the maps); the block then ends normally and the model call returns
        nothing.  Not for use with gradient checkpointing.
        """
        if not self._installed:
            raise L2SError("this AttentionCapture was removed; create a new one")
        if self._state.spec is not None:
            raise L2SError("recording() is already active on this capture")
        latent_hw = tuple(int(side) for side in latent_hw)
        if len(latent_hw) != 2 or min(latent_hw) <= 0:
            raise L2SError(f"latent_hw must be two positive sizes, got {latent_hw}")
        spec = _MapSpec(_normalise_groups(groups, text_len), int(text_len), latent_hw)
        captured = CapturedMaps(spec.groups, spec.text_len)
        self._state.spec, self._state.captured = spec, captured
        self._state.stop_after = self.layer_names[-1] if stop_after_last else None
        try:
            yield captured
        except _ForwardStopped:
            pass
        finally:
            self._state.spec, self._state.captured, self._state.stop_after = None, None, None


class ExplicitAttentionReference(AttentionCapture):
    """The published "reference mode" capture: explicit attention everywhere it is installed.

    Same API and same maps as :class:`AttentionCapture`, but every captured layer computes its
    output with an explicit softmax over materialised logits (also when not recording), and the maps
    are sliced from those logits (FLUX: ``logits[:, :, T:, :T]`` softmaxed over text) and averaged by
    indexing. Used to validate and benchmark the fast path.
    """

    _flux_processor_cls = FluxExplicitReferenceProcessor
    _unet_processor_cls = CrossAttentionExplicitReferenceProcessor
