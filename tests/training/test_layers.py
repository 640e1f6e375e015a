"""Classifiers of the first K layers, trained and read from a dataset of every layer's maps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from l2s.classifier import ClassifierConfig, RelationClassifier
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import (
    AttentionMapDataset,
    RelationSample,
    load_dataset_meta,
    make_dataset,
    train_classifier,
    write_map_dataset,
)

LAYOUT = [["transformer_blocks.0.attn", 2, [4, 4]], ["transformer_blocks.1.attn", 2, [4, 4]],
          ["single_transformer_blocks.0.attn", 2, [4, 4]]]


def _config(channels: int, layout=None) -> ClassifierConfig:
    return ClassifierConfig(channels=channels, map_size=4, timesteps=(1,), num_timesteps=2, d_model=16,
                            pe_length=6, extractor_layers=1, extractor_heads=2, extractor_ff=16, pool_heads=2,
                            head_layers=1, head_heads=2, head_ff=16, fc_dims=(8,), dropout=0.0,
                            model_family="custom", layer_layout=layout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Maps whose channel c holds the value c (plus the record index): selections are checkable."""
    n = 24
    maps = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(n, 2, 6, 4, 4).clone()
    maps += torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1) * 100
    records = [{"label": PUBLISHED_CLASSES[i % 5], "timestep": 1, "split": "train" if i < 16 else "val"}
               for i in range(n)]
    return write_map_dataset(tmp_path_factory.mktemp("k") / "data", records, maps, class_names=PUBLISHED_CLASSES,
                             num_steps=2, layer_layout=LAYOUT)


def test_a_layout_reads_its_layers_channels(dataset):
    full = AttentionMapDataset(dataset, "train")
    first = AttentionMapDataset(dataset, "train", layers=LAYOUT[:1])
    later = AttentionMapDataset(dataset, "train", layers=LAYOUT[1:])
    for i in (0, 5):
        assert torch.equal(first[i][0], full[i][0][:, :2]) and torch.equal(later[i][0], full[i][0][:, 2:])
        assert first[i][1:] == full[i][1:]
    assert torch.equal(AttentionMapDataset(dataset, "train", layers=LAYOUT)[3][0], full[3][0])
    with pytest.raises(ClassifierMismatchError, match="not in the stored layout"):
        AttentionMapDataset(dataset, "train", layers=[["transformer_blocks.7.attn", 2, [4, 4]]])


def test_training_with_layers_k_keeps_the_first_k_blocks(dataset, tmp_path):
    result = train_classifier(dataset, tmp_path / "k2", _config(6, LAYOUT), epochs=1, batch_size=8, progress=False,
                              layers=2)
    model = RelationClassifier.load(result.best_dir)
    assert model.config.channels == 4 and model.config.layer_layout == LAYOUT[:2]
    training = json.loads((result.best_dir / "training.json").read_text())
    assert training["classifier"]["layer_layout"] == LAYOUT[:2]
    # A config of its own layout trains the same way; one that does not fit is refused before training.
    own = train_classifier(dataset, tmp_path / "own", _config(2, LAYOUT[:1]), epochs=1, batch_size=8,
                           progress=False)
    assert RelationClassifier.load(own.best_dir).config.channels == 2
    wide = [["transformer_blocks.0.attn", 6, [4, 4]]]
    with pytest.raises(ClassifierMismatchError, match="heads 6 differ from the stored 2"):
        train_classifier(dataset, tmp_path / "bad", _config(6, wide), epochs=1, progress=False)
    with pytest.raises(L2SError, match="choose 1 to 3"):
        train_classifier(dataset, tmp_path / "deep", _config(6, LAYOUT), epochs=1, progress=False, layers=4)


def test_a_dataset_without_a_layout_cannot_give_the_first_k(tmp_path):
    maps = torch.rand(4, 2, 6, 4, 4)
    records = [{"label": "above", "timestep": 1, "split": s} for s in ("train", "train", "val", "val")]
    data = write_map_dataset(tmp_path / "plain", records, maps, class_names=PUBLISHED_CLASSES, num_steps=2)
    with pytest.raises(L2SError, match="names no layers"):
        train_classifier(data, tmp_path / "run", _config(6), epochs=1, progress=False, layers=1)
    with pytest.raises(ClassifierMismatchError, match="names no layers"):
        AttentionMapDataset(data, layers=LAYOUT[:1])


def test_make_data_with_layers_stores_the_first_k_blocks_only(tmp_path):
    from l2s.demo import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=1, seed=0)
    image = Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype("uint8"))
    samples = [RelationSample("img0", image, "cat", "left of", "dog", "test")]
    settings = dict(steps=2, store_steps=(1,), size=16, max_sequence_length=32, progress=False, num_iter=1,
                    map_size=8)
    make_dataset(samples, pipe, tmp_path / "k1", layers=1, **settings)
    make_dataset(samples, pipe, tmp_path / "all", **settings)
    k1, full = load_dataset_meta(tmp_path / "k1"), load_dataset_meta(tmp_path / "all")
    assert k1["channels"] == 2 and full["channels"] == 6
    assert k1["layer_layout"] == full["layer_layout"][:1] and k1["settings"]["layers"] == 1
    assert "layers" not in full["settings"]                  # datasets of every layer keep their hash
    small, every = AttentionMapDataset(tmp_path / "k1", None), AttentionMapDataset(tmp_path / "all", None)
    torch.testing.assert_close(small[0][0], every[0][0][:, :2])
    with pytest.raises(L2SError, match="choose 1 to 3"):
        make_dataset(samples, pipe, tmp_path / "k9", layers=9, **settings)


def test_train_cli_layers_option(dataset, tmp_path, capsys):
    from l2s.cli.training import train_main

    assert train_main([str(dataset), "--out", str(tmp_path / "k1"), "--preset", "flux-schnell", "--layers", "1",
                       "--epochs", "1", "--quiet"]) == 0
    model = RelationClassifier.load(tmp_path / "k1" / "best")
    assert model.config.channels == 2 and model.config.layer_layout == LAYOUT[:1]
    assert capsys.readouterr().err.splitlines()[-1] == f"l2s: training curves in {tmp_path / 'k1' / 'curves.png'}"
    assert train_main([str(dataset), "--out", str(tmp_path / "k9"), "--preset", "flux-schnell", "--layers", "9",
                       "--quiet"]) == 2
    assert "l2s: error: --layers 9: cannot keep the first 9 layers" in capsys.readouterr().err
