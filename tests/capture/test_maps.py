"""CapturedMaps.classifier_input and resize_maps_for_classifier on synthetic maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2s.capture import CapturedMaps
from l2s.errors import L2SError

TOL = dict(rtol=0.0, atol=1e-5)


def synthetic_maps(grids: list[tuple[int, int]], batch=3, heads=2, groups=3, seed=7) -> CapturedMaps:
    generator = torch.Generator().manual_seed(seed)
    captured = CapturedMaps([[index] for index in range(groups)], text_len=groups)
    for number, (height, width) in enumerate(grids):
        maps = torch.rand(batch, heads, height * width, groups, generator=generator, dtype=torch.float64)
        captured.record(f"layer{number}", maps, (height, width))
    return captured


def test_classifier_input_single_matching_resolution_is_untouched():
    captured = synthetic_maps([(16, 16)] * 3)
    features = captured.classifier_input(subject=2, obj=0)
    assert features.shape == (3, 2, 6, 16, 16) and features.dtype == torch.float32
    for layer_index, layer in enumerate(captured.layers):
        for head in range(2):
            channel = layer_index * 2 + head
            for batch in range(3):  # every batch element independently
                torch.testing.assert_close(
                    features[batch, 0, channel], layer.maps[batch, head, :, 2].reshape(16, 16).float(), rtol=0, atol=0
                )
                torch.testing.assert_close(
                    features[batch, 1, channel], layer.maps[batch, head, :, 0].reshape(16, 16).float(), rtol=0, atol=0
                )
    # No renormalisation (schnell): spatial sums stay whatever they were.
    assert (features.sum((-2, -1)) - 1).abs().min() > 1


def test_classifier_input_dev_downsampling_is_average_pooling_then_renormalisation():
    captured = synthetic_maps([(32, 32)] * 2)
    features = captured.classifier_input(0, 1, map_size=16)
    raw = torch.cat(
        [layer.maps[..., [0, 1]].permute(0, 3, 1, 2).reshape(3, 2, 2, 32, 32) for layer in captured.layers], dim=2
    ).float()
    pooled = F.avg_pool2d(raw.flatten(0, 1), 2).unflatten(0, (3, 2))
    expected = pooled / (pooled.sum((-2, -1), keepdim=True) + 1e-8)
    torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(features.sum((-2, -1)), torch.ones(3, 2, 4), **TOL)


def test_classifier_input_multi_resolution_ascending_order_and_renormalisation():
    # Execution order 16, 8, 16, 32, 4x6: channel blocks must be 4x6 (24 tokens), 8, 16, 16, 32.
    grids = [(16, 16), (8, 8), (16, 16), (32, 32), (4, 6)]
    captured = synthetic_maps(grids)
    features = captured.classifier_input(1, 2, map_size=16)
    assert features.shape == (3, 2, 10, 16, 16)
    torch.testing.assert_close(features.sum((-2, -1)), torch.ones(3, 2, 10), **TOL)
    expected_layer_order = [4, 1, 0, 2, 3]
    for block, layer_index in enumerate(expected_layer_order):
        layer = captured.layers[layer_index]
        subject = layer.maps[..., 1].reshape(3, 2, *layer.grid).float()
        resized = F.interpolate(subject, size=(16, 16), mode="bilinear", align_corners=False)
        resized = resized / (resized.sum((-2, -1), keepdim=True) + 1e-8)
        torch.testing.assert_close(features[:, 0, 2 * block : 2 * block + 2], resized, rtol=1e-6, atol=1e-7)


def test_classifier_input_errors():
    with pytest.raises(L2SError, match="no attention maps"):
        CapturedMaps([[0]], 1).classifier_input(0, 0)
    with pytest.raises(L2SError, match="out of range"):
        synthetic_maps([(16, 16)]).classifier_input(0, 3)
