"""Classifier configuration: published presets, JSON round trip and validation, step indices."""
from __future__ import annotations

import json

import pytest

from l2s.classifier import ClassifierConfig, RelationClassifier, preset, step_index_for
from l2s.errors import ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

from .helpers import tiny_config, tiny_model


def test_presets_carry_published_settings():
    dev, schnell = preset("flux-dev"), preset("flux-schnell")
    sd14, sd21 = preset("sd14"), preset("SD2")
    assert (dev.channels, dev.timesteps, dev.num_timesteps, dev.orig_map_size) == (
        1368, (5, 10, 15, 20, 25, 49), 50, 32)
    assert (schnell.channels, schnell.timesteps, schnell.num_timesteps, schnell.orig_map_size) == (
        1368, (1, 3), 4, 16)
    assert (sd14.channels, sd21.channels, sd21.model_family) == (128, 195, "sd21")
    assert (sd14.extractor_layers, sd14.extractor_heads, sd14.extractor_ff, sd14.pool_heads,
            sd14.head_layers, sd14.head_heads, sd14.head_ff) == (2, 2, 128, 2, 2, 4, 128)
    assert dev.class_names == PUBLISHED_CLASSES
    assert preset("flux-dev", channels=57, dropout=0.1).channels == 57
    with pytest.raises(ValueError, match="unknown classifier preset"):
        preset("sdxl")


def test_config_json_round_trip_and_validation():
    config = tiny_config(class_names=("a", "b", "c"), fc_dims=(8,), layer_layout=[["x", 6, 8]])
    assert ClassifierConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ModelLoadError, match="unknown classifier config keys: colour"):
        ClassifierConfig.from_json({**config.to_json(), "colour": "red"})
    with pytest.raises(ModelLoadError, match="format version"):
        ClassifierConfig.from_json({**config.to_json(), "format_version": 99})
    with pytest.raises(ModelLoadError, match="invalid classifier config"):
        ClassifierConfig.from_json({k: v for k, v in config.to_json().items() if k != "channels"})
    with pytest.raises(ValueError, match="layer_layout describes 5 channels"):
        tiny_config(layer_layout=[["x", 5, 8]])
    with pytest.raises(ValueError, match="exceed the positional encoding"):
        tiny_config(channels=13)
    with pytest.raises(ValueError, match="trained timesteps"):
        tiny_config(timesteps=(6,))
    # a custom MLP width changes the head as asked
    assert RelationClassifier(config).relation_classifier.fc[-1].in_features == 8


# --- step index --------------------------------------------------------------------------------

def test_step_index_for_published_tables():
    dev = (5, 10, 15, 20, 25, 49)
    expected_dev = [5] * 6 + [10] * 5 + [15] * 5 + [20] * 5 + [25] * 5 + [49] * 24
    assert [step_index_for(s, dev) for s in range(50)] == expected_dev
    assert [step_index_for(s, (1, 3)) for s in range(4)] == [1, 1, 3, 3]
    assert step_index_for(60, dev) == 49 and step_index_for(7, (3, 1)) == 3
    assert tiny_model().step_index(2) == 3
    with pytest.raises(ValueError):
        step_index_for(-1, dev)
    with pytest.raises(ValueError):
        step_index_for(0, ())
