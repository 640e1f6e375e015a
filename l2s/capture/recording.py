"""What an active recording asks for, and the recording logic the FLUX and UNet processors share."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from l2s.errors import L2SError
from l2s.ops import selected_text_attention, selector_width, token_group_selector

from .maps import CapturedMaps


class MapSpec:
    """What an active recording asks for: token groups, text length, full-resolution token grid."""

    def __init__(self, groups: tuple[tuple[int, ...], ...], text_len: int, latent_hw: tuple[int, int]) -> None:
        self.groups = groups
        self.text_len = text_len
        self.latent_hw = latent_hw
        self._selectors: dict[tuple, torch.Tensor] = {}

    def selector(self, head_dim: int, device: torch.device, dtype: torch.dtype,
                 backend: str = "sdpa") -> torch.Tensor:
        """The (padded) selector for this layer's device, dtype and head dim, built once per recording."""
        width = selector_width(len(self.groups), head_dim, device, backend)
        cache_key = (width, device, dtype)
        if cache_key not in self._selectors:
            self._selectors[cache_key] = token_group_selector(
                self.groups, self.text_len, width, device=device, dtype=dtype
            )
        return self._selectors[cache_key]


class CaptureState:
    """Shared by one capture's processors: what to record (None = plain forward) and where."""

    def __init__(self) -> None:
        self.spec: MapSpec | None = None
        self.captured: CapturedMaps | None = None
        self.stop_after: str | None = None     # layer after which the forward is cut short
        self.backend = "sdpa"                  # how maps are computed: "sdpa" or "native"


class ForwardStopped(Exception):
    """Raised after the last captured layer when the rest of the forward is not needed."""


def downsampled_grid(latent_hw: tuple[int, int], downsamplings: int) -> tuple[int, int]:
    """Grid after ``downsamplings`` stride-2 convolutions (kernel 3, padding 1: ceil halving)."""
    height, width = latent_hw
    for _ in range(downsamplings):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def explicit_group_maps(text_probs: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, H, N, T)`` text probabilities -> ``(B, H, N, G)`` by averaging each group's columns."""
    return torch.stack([text_probs[..., list(tokens)].mean(dim=-1) for tokens in groups], dim=-1)


def _in_autograd_backward() -> bool:
    """True while autograd's engine runs a backward pass (e.g. a gradient-checkpoint recompute)."""
    return torch._C._current_graph_task_id() != -1


class CaptureProcessorMixin:
    """Recording logic shared by the FLUX and UNet processors."""

    def _init_capture(self, layer: str, state: CaptureState, downsamplings: int) -> None:
        self.layer = layer
        self._state = state
        self._downsamplings = downsamplings
        # The request this layer served in its latest forward. A non-reentrant gradient-checkpoint
        # recompute (run during backward) must redo exactly the same ops, since saved tensors are
        # matched by order; it computes the maps again but stores nothing.
        self._last_spec: MapSpec | None = None

    def _map_request(self) -> tuple[MapSpec | None, CapturedMaps | None]:
        """(spec to compute maps for or None, where to store them or None)."""
        if _in_autograd_backward():
            return self._last_spec, None
        self._last_spec = self._state.spec
        return self._state.spec, self._state.captured

    def _selected_maps(
        self, spec: MapSpec, query: torch.Tensor, text_key: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, H, N, G)`` maps of ``spec``'s groups from ``(B, H, ·, D)`` queries and text keys."""
        backend = self._state.backend
        selector = spec.selector(query.shape[-1], query.device, query.dtype, backend)
        maps = selected_text_attention(query, text_key, selector, attn_mask=attn_mask, backend=backend)
        return maps[..., : len(spec.groups)]

    def _store(self, spec: MapSpec, captured: CapturedMaps | None, maps: torch.Tensor) -> None:
        if captured is None:
            return
        num_image_tokens = maps.shape[2]
        height, width = downsampled_grid(spec.latent_hw, self._downsamplings)
        if height * width != num_image_tokens:
            raise L2SError(
                f"layer {self.layer}: {num_image_tokens} image tokens do not match the {height}x{width} grid "
                f"derived from latent_hw={spec.latent_hw}"
            )
        captured.record(self.layer, maps, (height, width))
        if self._state.stop_after == self.layer:
            raise ForwardStopped
