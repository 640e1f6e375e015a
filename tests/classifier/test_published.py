"""Published ``.pth`` checkpoints: identical logits, inferred family, refused and corrupt files."""
from __future__ import annotations

import pytest
import torch

from l2s.classifier import (
    RelationClassifier,
    convert_published_checkpoint,
    load_published_checkpoint,
    preset,
)
from l2s.errors import ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

from .helpers import C, random_maps, tiny_model


def published_checkpoint(model: RelationClassifier, exp_name: str | None = None,
                         orig_map_size: int | None = 16, state_prefix: str = "") -> dict:
    """A checkpoint dict laid out like the official training code's ``save_model``."""
    c = model.config
    model_cfg = {
        "extractor": {"nhead": c.extractor_heads, "num_layers": c.extractor_layers,
                      "dim_feedforward": c.extractor_ff, "layer_attn_nheads": c.pool_heads,
                      "dropout": 0.3, "timestep_embedding": {"enable": True, "mode": "mid"}},
        "classifier": {"mode": "multiclass", "fc_ver": "v1", "timestep_embedding_dim": c.step_embedding_dim,
                       "nhead": c.head_heads, "num_layers": c.head_layers,
                       "dim_feedforward": c.head_ff, "dropout": 0.3},
        "map_size": c.map_size, "d_model": c.d_model, "num_timesteps": c.num_timesteps,
        "architecture": "attention",
    }
    training_cfg = {"lr": 5e-5, "weight_decay": 0.05, "batch_size": 64, "timesteps": list(c.timesteps),
                    "num_timesteps": c.num_timesteps}
    if exp_name is not None:
        training_cfg["exp_name"] = exp_name
    if orig_map_size is not None:
        training_cfg["orig_map_size"] = orig_map_size
    names = c.class_names
    return {
        "model_state_dict": {state_prefix + k: v.clone() for k, v in model.state_dict().items()},
        # insertion order deliberately reversed: the index, not the order, decides
        "rel_name_to_idx": {n: i for i, n in reversed(list(enumerate(names)))},
        "idx_to_rel_name": {i: n for i, n in reversed(list(enumerate(names)))},
        "input_channels": c.pe_length,
        "config": model_cfg,
        "training_config": training_cfg,
    }


def test_published_checkpoint_loads_with_identical_logits(tmp_path):
    source = tiny_model(seed=3)
    path = tmp_path / "custom.pth"
    torch.save(published_checkpoint(source, orig_map_size=32), path)
    maps, steps = random_maps(), torch.tensor([[1.0], [3.0], [5.0]])
    with torch.no_grad():
        expected = source(maps, steps)
    for loaded in (load_published_checkpoint(path, channels=C), RelationClassifier.load(path, channels=C)):
        config = loaded.config
        assert config.class_names == PUBLISHED_CLASSES
        assert (config.channels, config.pe_length, config.timesteps, config.num_timesteps) == (C, 12, (1, 3, 5), 6)
        assert (config.orig_map_size, config.model_family) == (32, "custom")
        with torch.no_grad():
            assert torch.equal(loaded(maps, steps), expected)


def test_published_checkpoint_saved_from_data_parallel_loads(tmp_path):
    source = tiny_model(seed=4)
    path = tmp_path / "dp.pth"
    torch.save(published_checkpoint(source, state_prefix="module."), path)
    loaded = load_published_checkpoint(path, channels=C)
    maps = random_maps()
    with torch.no_grad():
        assert torch.equal(loaded(maps, torch.tensor([1, 1, 1])), source(maps, torch.tensor([1, 1, 1])))


def test_published_family_and_channels_are_inferred(tmp_path):
    torch.manual_seed(0)
    schnell = RelationClassifier(preset("flux-schnell")).eval()
    path = tmp_path / "model.pth"
    torch.save(published_checkpoint(schnell, exp_name="flux_schnell", orig_map_size=None), path)
    loaded = load_published_checkpoint(path)
    config = loaded.config
    assert (config.model_family, config.channels, config.timesteps, config.num_timesteps) == (
        "flux-schnell", 1368, (1, 3), 4)
    assert config.orig_map_size == 16  # family default when the file does not record it
    maps = random_maps(batch=1, channels=1368, size=16)
    with torch.no_grad():
        assert torch.equal(loaded(maps, torch.tensor([1])), schnell(maps, torch.tensor([1])))

    sd = RelationClassifier(preset("sd21")).eval()
    anonymous = tmp_path / "classifier.pth"
    torch.save(published_checkpoint(sd), anonymous)
    with pytest.raises(ModelLoadError, match="pass channels="):
        load_published_checkpoint(anonymous)
    assert load_published_checkpoint(anonymous, channels=128).config.channels == 128
    named = tmp_path / "sd2.pth"
    torch.save(published_checkpoint(sd), named)
    assert (load_published_checkpoint(named).config.channels,
            load_published_checkpoint(named).config.model_family) == (195, "sd21")


def test_a_published_checkpoint_records_the_family_whose_maps_trained_it(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "flux_schnell.pth"
    torch.save(published_checkpoint(RelationClassifier(preset("flux-schnell")), exp_name="flux_schnell"), path)
    assert load_published_checkpoint(path).training_record == {
        "source": "the published Learn-to-Steer checkpoint flux_schnell.pth", "model_family": "flux-schnell"}
    torch.save(published_checkpoint(tiny_model(seed=5)), tmp_path / "custom.pth")     # sizes of no family
    assert "model_family" not in load_published_checkpoint(tmp_path / "custom.pth", channels=C).training_record


def test_convert_published_checkpoint(tmp_path):
    source = tiny_model(seed=5)
    torch.save(published_checkpoint(source), tmp_path / "custom.pth")
    out = convert_published_checkpoint(tmp_path / "custom.pth", tmp_path / "converted", channels=C)
    assert out == tmp_path / "converted"
    loaded = RelationClassifier.load(out)
    maps = random_maps()
    with torch.no_grad():
        assert torch.equal(loaded(maps, torch.tensor([5, 3, 1])), source(maps, torch.tensor([5, 3, 1])))


UNPICKLED = []


def _record_unpickling() -> str:
    UNPICKLED.append(True)
    return "payload"


class Payload:
    """An object whose unpickling would run code: a weights-only load must never do it."""

    def __reduce__(self):
        return (_record_unpickling, ())


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_with_arbitrary_object_is_refused(tmp_path, zip_format):
    checkpoint = published_checkpoint(tiny_model())
    checkpoint["training_config"]["extra"] = Payload()
    path = tmp_path / "evil.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    UNPICKLED.clear()
    with pytest.raises(ModelLoadError, match="refusing to load .*_record_unpickling"):
        load_published_checkpoint(path, channels=C)
    with pytest.raises(ModelLoadError, match="refusing to load"):
        RelationClassifier.load(path, channels=C)
    assert UNPICKLED == []


def test_corrupt_or_foreign_published_files_raise_model_load_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(published_checkpoint(tiny_model()), good)
    data = good.read_bytes()
    cases = {
        "truncated.pth": (data[: len(data) // 2], "cannot read classifier checkpoint"),
        "random.pth": (bytes(range(256)) * 4, "cannot read classifier checkpoint"),
        "empty.pth": (b"", "cannot read classifier checkpoint"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError, match=message):
            load_published_checkpoint(tmp_path / name, channels=C)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelLoadError, match="top level is list"):
        load_published_checkpoint(tmp_path / "list.pth")
    incomplete = published_checkpoint(tiny_model())
    del incomplete["config"]
    torch.save(incomplete, tmp_path / "noconfig.pth")
    with pytest.raises(ModelLoadError, match="missing config"):
        load_published_checkpoint(tmp_path / "noconfig.pth", channels=C)
    mismatched = published_checkpoint(tiny_model())
    mismatched["config"]["classifier"]["dim_feedforward"] = 64
    torch.save(mismatched, tmp_path / "mismatch.pth")
    with pytest.raises(ModelLoadError, match="wrong shape: relation_classifier.transformer.layers.0.linear1"):
        load_published_checkpoint(tmp_path / "mismatch.pth", channels=C)
    pre_mode = published_checkpoint(tiny_model())
    pre_mode["config"]["extractor"]["timestep_embedding"]["mode"] = "pre"
    torch.save(pre_mode, tmp_path / "pre.pth")
    with pytest.raises(ModelLoadError, match="'mid' step embedding"):
        load_published_checkpoint(tmp_path / "pre.pth", channels=C)
    with pytest.raises(ModelLoadError, match="not found"):
        load_published_checkpoint(tmp_path / "absent.pth")
