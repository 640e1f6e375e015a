"""The captured maps: per-layer records and their conversion to the classifier's input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from l2s.errors import L2SError

# Renormalisation epsilon of the published resize step.
_RENORM_EPS = 1e-8


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


def select_pair(maps: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, W)`` group maps -> ``(B, 2, H, N)``: the groups ``pair`` names, either one
    (subject, object) for every image, shape ``(2,)``, or one per image, shape ``(B, 2)``."""
    if pair.dim() == 1:
        chosen = maps.index_select(-1, pair)
    else:
        batch, heads, tokens = maps.shape[:3]
        chosen = maps.gather(-1, pair.view(batch, 1, 1, 2).expand(batch, heads, tokens, 2))
    return chosen.permute(0, 3, 1, 2)


def pair_input(layer_maps: Sequence[torch.Tensor], grid: tuple[int, int], pair: torch.Tensor,
               map_size: int) -> torch.Tensor:
    """The classifier's ``(B, 2, C, map_size, map_size)`` input from per-layer ``(B, H, N, W)`` maps
    on one token ``grid`` (FLUX), for the groups ``pair`` (see :func:`select_pair`): a device
    tensor, so that a relation's choice is data, not a constant a compiled graph would specialise on."""
    per_layer = []
    for maps in layer_maps:
        batch, heads = maps.shape[:2]
        per_layer.append((select_pair(maps, pair).reshape(batch, 2, heads, *grid), grid))
    return resize_maps_for_classifier(per_layer, map_size)


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
        self._check_recorded((subject, obj))
        per_layer = []
        for layer in self.layers:
            batch, heads, _, _ = layer.maps.shape
            # Two basic selects, not a list index: no index tensor copied to the device per layer.
            pair = torch.stack((layer.maps[..., subject], layer.maps[..., obj]), dim=1)  # (B, 2, H, N)
            pair = pair.reshape(batch, 2, heads, *layer.grid)
            per_layer.append((pair, layer.grid))
        return resize_maps_for_classifier(per_layer, map_size)

    def pair_input(self, pair: torch.Tensor, map_size: int = 16) -> torch.Tensor:
        """:meth:`classifier_input` for a ``(B, 2)`` device tensor of each image's own groups."""
        self._check_recorded(())
        per_layer = []
        for layer in self.layers:
            batch, heads, _, _ = layer.maps.shape
            per_layer.append((select_pair(layer.maps, pair).reshape(batch, 2, heads, *layer.grid), layer.grid))
        return resize_maps_for_classifier(per_layer, map_size)

    def _check_recorded(self, groups: Sequence[int]) -> None:
        if not self.layers:
            raise L2SError("no attention maps were recorded: run the model inside AttentionCapture.recording()")
        for group in groups:
            if not 0 <= group < len(self.groups):
                raise L2SError(f"group index {group} out of range: {len(self.groups)} token groups were recorded")
