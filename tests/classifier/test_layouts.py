"""Layer layouts: the first K blocks, their channels inside maps of every layer, FLUX presets of K
blocks, and steering with such a classifier runs only those blocks."""
from __future__ import annotations

import pytest
import torch

from l2s.capture import resize_maps_for_classifier
from l2s.classifier import (
    RelationClassifier,
    first_blocks,
    flux_layout,
    layout_channels,
    layout_channels_count,
    preset,
)

LAYOUT = [["transformer_blocks.0.attn", 4, [16, 16]], ["transformer_blocks.1.attn", 4, [16, 16]],
          ["single_transformer_blocks.0.attn", 4, [16, 16]]]


def test_first_blocks_keep_the_execution_order_prefix():
    assert first_blocks(LAYOUT, 2) == LAYOUT[:2]
    assert layout_channels(LAYOUT, first_blocks(LAYOUT, 2)) == list(range(8))
    assert layout_channels(LAYOUT, LAYOUT[1:]) == list(range(4, 12))
    for k in (0, 4):
        with pytest.raises(ValueError, match="choose 1 to 3"):
            first_blocks(LAYOUT, k)


def test_layers_out_of_order_unknown_or_with_other_heads_are_refused():
    with pytest.raises(ValueError, match="in the order"):
        layout_channels(LAYOUT, [LAYOUT[1], LAYOUT[0]])
    with pytest.raises(ValueError, match="not in the stored layout"):
        layout_channels(LAYOUT, [["transformer_blocks.9.attn", 4, [16, 16]]])
    with pytest.raises(ValueError, match="heads"):
        layout_channels(LAYOUT, [["transformer_blocks.0.attn", 2, [16, 16]]])


def test_channels_follow_the_stored_order_when_grids_differ():
    """UNet layers of several grids: the stored channels are grouped by grid (smallest first), so a
    subset's channels are found where resize_maps_for_classifier put them, in its own order."""
    full = [["down.0", 2, [8, 8]], ["down.1", 1, [4, 4]], ["up.0", 2, [4, 4]], ["up.1", 1, [8, 8]]]
    # Tag each map with "layer * 10 + head" and store them as the capture would.
    maps = [(torch.full((h, *grid), 10.0 * i).add(torch.arange(h).view(h, 1, 1)), tuple(grid))
            for i, (_, h, grid) in enumerate(full)]
    stored = resize_maps_for_classifier(maps, 8)
    tags = stored.amax(dim=(-2, -1)).round()          # resizing renormalises; the tag is the max
    sub = [full[0], full[2], full[3]]
    expected = resize_maps_for_classifier([maps[0], maps[2], maps[3]], 8).amax(dim=(-2, -1)).round()
    assert torch.equal(tags[layout_channels(full, sub)], expected)


def test_flux_preset_of_the_first_k_blocks():
    config = preset("flux-dev", layers=3)
    assert config.channels == 72 == layout_channels_count(config.layer_layout)
    assert [entry[0] for entry in config.layer_layout] == [
        "transformer_blocks.0.attn", "transformer_blocks.1.attn", "transformer_blocks.2.attn"]
    deep = preset("flux-dev", layers=21)
    assert deep.layer_layout[-1][0] == "single_transformer_blocks.1.attn" and deep.channels == 21 * 24
    assert layout_channels_count(flux_layout()) == preset("flux-dev").channels == 1368
    with pytest.raises(ValueError, match="give 72 channels, not 10"):
        preset("flux-dev", layers=3, channels=10)
    with pytest.raises(ValueError, match="FLUX presets"):
        preset("sd14", layers=2)
    restored = RelationClassifier(config).config
    assert restored.layer_layout == config.layer_layout


def test_steering_with_a_first_block_classifier_runs_only_that_block():
    """Fast mode cuts each steering forward after the classifier's last layer: with a classifier of
    the first block, no later block runs during steering (only on the plain denoising passes)."""
    from l2s.demo import tiny_classifier_config, tiny_flux_pipeline
    from l2s.pipelines import wrap_pipeline
    from l2s.steer import custom_schedule

    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=1, seed=0)
    layout = [["transformer_blocks.0.attn", 2, [8, 8]]]
    torch.manual_seed(0)
    classifier = RelationClassifier(tiny_classifier_config(2)).eval()
    classifier.config.layer_layout = layout
    steerer = wrap_pipeline(pipe, classifier)
    calls = {"first": 0, "last": 0}
    blocks = pipe.transformer.transformer_blocks
    # Each pass projects the queries of a block it runs (the steered forward calls the blocks'
    # submodules, not the blocks: a hook on the transformer or a block would not see it).
    hooks = [blocks[0].attn.to_q.register_forward_pre_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1)),
             pipe.transformer.single_transformer_blocks[0].attn.to_q.register_forward_pre_hook(
                 lambda *a: calls.__setitem__("last", calls["last"] + 1))]
    try:
        schedule = custom_schedule(2, steered=[0], iterations=3, step_size=1.0)
        result = steerer("a cat above a dog", num_inference_steps=2, height=16, width=16, seed=0,
                         schedule=schedule, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    iterations = len(result.diagnostics.records)
    assert iterations >= 1
    # Every plain pass runs both blocks; steering forwards run the first block only.
    assert calls["first"] - calls["last"] == iterations
