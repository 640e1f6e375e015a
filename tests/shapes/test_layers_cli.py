"""``l2s shapes train-classifier --layers K``: a classifier of the first K blocks from the same data."""
from __future__ import annotations

import pytest
import torch

from l2s.classifier import RelationClassifier
from l2s.cli.shapes_classifier import build_make_data_parser, train_classifier_main
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import write_map_dataset

LAYOUT = [["transformer_blocks.0.attn", 4, [8, 8]], ["transformer_blocks.1.attn", 4, [8, 8]],
          ["single_transformer_blocks.0.attn", 4, [8, 8]]]


def test_train_classifier_layers_option(tmp_path, capsys):
    records = [{"label": PUBLISHED_CLASSES[i % 5], "timestep": (1, 3, 5)[i % 3], "split": "val" if i % 4 == 0 else "train"}
               for i in range(30)]
    data = write_map_dataset(tmp_path / "data", records, torch.rand(30, 2, 12, 8, 8), class_names=PUBLISHED_CLASSES,
                             num_steps=12, store_steps=(1, 3, 5), layer_layout=LAYOUT)
    assert train_classifier_main(["--data", str(data), "--out", str(tmp_path / "k2"), "--layers", "2",
                                  "--epochs", "1", "--quiet"]) == 0
    model = RelationClassifier.load(tmp_path / "k2" / "best")
    assert model.config.channels == 8 and model.config.layer_layout == LAYOUT[:2]
    assert "best epoch 1" in capsys.readouterr().err
    with pytest.raises(Exception, match="choose 1 to 3"):
        train_classifier_main(["--data", str(data), "--out", str(tmp_path / "k4"), "--layers", "4", "--quiet"])
    assert build_make_data_parser().parse_args(["--out", "x", "--layers", "3"]).layers == 3
