"""Tests for the relation classifier: architecture, published-checkpoint compatibility, I/O, gradients."""
from __future__ import annotations

import json
import math

import pytest
import torch

from l2s.classifier import (
    ClassifierConfig,
    RelationClassifier,
    convert_published_checkpoint,
    load_published_checkpoint,
    preset,
    step_index_for,
)
from l2s.errors import ClassifierMismatchError, ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

C, M = 6, 4  # channels and map size of the tiny test classifier


def tiny_config(**overrides) -> ClassifierConfig:
    fields = dict(channels=C, map_size=M, d_model=16, pe_length=12, timesteps=(1, 3, 5), num_timesteps=6,
                  extractor_layers=2, extractor_heads=2, extractor_ff=32, pool_heads=2,
                  head_layers=2, head_heads=2, head_ff=32, step_embedding_dim=4, model_family="custom")
    fields.update(overrides)
    return ClassifierConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> RelationClassifier:
    torch.manual_seed(seed)
    return RelationClassifier(tiny_config(**overrides)).eval()


def random_maps(batch: int = 3, channels: int = C, size: int = M, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, channels, size, size, generator=generator)


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


# --- architecture ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, total, extractor", [
    ("flux-schnell", 4_848_453, 2_504_448),
    ("flux-dev", 4_860_965, 2_516_224),
    ("sd14", 1_964_581, 1_068_032),
    ("sd21", 1_964_581, 1_068_032),
])
def test_preset_parameter_counts_match_published(name, total, extractor):
    model = RelationClassifier(preset(name))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.object_extractor.parameters()) == extractor
    # The positional encoding is a buffer sized 1368 for every family, SD included.
    assert model.state_dict()["object_extractor.positional_encoding.pe"].shape == (1, 1368, 256)


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


def _published_layer_keys(prefix: str, ff: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.self_attn.in_proj_weight": (768, 256), f"{prefix}.self_attn.in_proj_bias": (768,),
        f"{prefix}.self_attn.out_proj.weight": (256, 256), f"{prefix}.self_attn.out_proj.bias": (256,),
        f"{prefix}.linear1.weight": (ff, 256), f"{prefix}.linear1.bias": (ff,),
        f"{prefix}.linear2.weight": (256, ff), f"{prefix}.linear2.bias": (256,),
        f"{prefix}.norm1.weight": (256,), f"{prefix}.norm1.bias": (256,),
        f"{prefix}.norm2.weight": (256,), f"{prefix}.norm2.bias": (256,),
    }


def test_state_dict_keys_and_shapes_match_published_layout():
    expected = {
        "object_extractor.input_projection.weight": (256, 256), "object_extractor.input_projection.bias": (256,),
        "object_extractor.timestep_embedding.weight": (50, 256),
        "object_extractor.positional_encoding.pe": (1, 1368, 256),
        "object_extractor.query_vector": (1, 1, 256),
        "object_extractor.layer_attention.in_proj_weight": (768, 256),
        "object_extractor.layer_attention.in_proj_bias": (768,),
        "object_extractor.layer_attention.out_proj.weight": (256, 256),
        "object_extractor.layer_attention.out_proj.bias": (256,),
        "object_extractor.output_projection.weight": (256, 256),
        "object_extractor.output_projection.bias": (256,),
        "relation_classifier.timestep_embedding.weight": (50, 16),
        "relation_classifier.positional_encoding.pe": (1, 256, 256),
        "relation_classifier.projection.weight": (256, 512), "relation_classifier.projection.bias": (256,),
        "relation_classifier.fc.0.weight": (256, 272), "relation_classifier.fc.0.bias": (256,),
        "relation_classifier.fc.1.weight": (256,), "relation_classifier.fc.1.bias": (256,),
        "relation_classifier.fc.4.weight": (128, 256), "relation_classifier.fc.4.bias": (128,),
        "relation_classifier.fc.5.weight": (128,), "relation_classifier.fc.5.bias": (128,),
        "relation_classifier.fc.8.weight": (5, 128), "relation_classifier.fc.8.bias": (5,),
    }
    for k in range(4):
        expected.update(_published_layer_keys(f"object_extractor.transformer.layers.{k}", 512))
        expected.update(_published_layer_keys(f"relation_classifier.transformer.layers.{k}", 512))
    state = RelationClassifier(preset("flux-dev")).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_positional_encodings_are_the_standard_sinusoid():
    model = tiny_model()
    pe = model.object_extractor.positional_encoding.pe[0]
    d = model.config.d_model
    for pos, i in [(0, 0), (3, 2), (11, 7)]:
        angle = pos * 10000 ** (-2 * i / d)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    head_pe = model.relation_classifier.positional_encoding.pe
    assert head_pe.shape == (1, 256, d)
    assert torch.equal(head_pe[0, 0], torch.tensor([0.0, 1.0] * (d // 2)))


def test_forward_shapes_and_step_index_forms():
    model = tiny_model()
    maps = random_maps(batch=3)
    with torch.no_grad():
        logits = model(maps, torch.tensor([3, 3, 3]))
        assert logits.shape == (3, len(PUBLISHED_CLASSES))
        # (B, 1) float as the published training code passes it, and a scalar, mean the same
        assert torch.allclose(model(maps, torch.full((3, 1), 3.0)), logits)
        assert torch.allclose(model(maps, torch.tensor(3)), logits)
        assert not torch.allclose(model(maps, torch.tensor([5, 5, 5])), logits)  # the step matters


def test_forward_rejects_maps_of_the_wrong_shape():
    model = tiny_model()
    with pytest.raises(ClassifierMismatchError, match="expects maps of shape"):
        model(random_maps(channels=C + 1), torch.tensor([1, 1, 1]))
    with pytest.raises(ClassifierMismatchError, match="expects maps of shape"):
        model(random_maps(size=M * 2), torch.tensor([1, 1, 1]))
    with pytest.raises(ClassifierMismatchError, match="step indices"):
        model(random_maps(batch=3), torch.tensor([1, 1]))


def test_extractor_is_shared_and_readds_step_embedding_before_every_layer():
    model = tiny_model()
    extractor = model.object_extractor
    maps, steps = random_maps(batch=2), torch.tensor([1, 5])
    # Reference forward written from the published description (mode "mid").
    x = extractor.input_projection(maps[:, 1].reshape(2, C, M * M)) + extractor.positional_encoding.pe[:, :C]
    embedding = extractor.timestep_embedding(steps)[:, None, :]
    for layer in extractor.transformer.layers:
        x = layer(x + embedding)
    query = extractor.query_vector.expand(2, -1, -1)
    pooled = extractor.layer_attention(query, x, x)[0]
    expected = extractor.output_projection(pooled).view(2, M, M)
    with torch.no_grad():
        assert torch.allclose(extractor(maps[:, 1], steps), expected, atol=1e-6)
        # Swapping subject and object changes the prediction (the head sees them in order).
        swapped = maps.flip(1)
        assert not torch.allclose(model(maps, steps), model(swapped, steps))


def test_eval_is_deterministic_and_train_uses_dropout():
    model = tiny_model()
    maps, steps = random_maps(), torch.tensor([1, 3, 5])
    with torch.no_grad():
        assert torch.equal(model(maps, steps), model(maps, steps))
        model.train()
        torch.manual_seed(0)
        first = model(maps, steps)
        second = model(maps, steps)
    assert not torch.allclose(first, second)


# --- gradients (the steering loop backpropagates into the maps) -------------------------------

def test_gradient_wrt_maps_matches_finite_differences_in_eval_with_frozen_weights():
    model = tiny_model().double().requires_grad_(False)
    maps = random_maps(batch=1).double().requires_grad_(True)
    steps = torch.tensor([3])
    assert torch.autograd.gradcheck(lambda m: model(m, steps), (maps,), eps=1e-6, atol=1e-5)


def test_cross_entropy_gradient_reaches_bf16_maps():
    model = tiny_model().requires_grad_(False)
    maps = random_maps(batch=1).to(torch.bfloat16).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(maps, torch.tensor([1])), torch.tensor([3]))
    (grad,) = torch.autograd.grad(loss, maps)
    assert grad.dtype == torch.bfloat16 and grad.abs().sum() > 0


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


# --- our format ----------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_logits(tmp_path):
    layout = [["block_0", 4, 16], ["block_1", [0, 5], 16]]
    model = tiny_model(layer_layout=layout, orig_map_size=32)
    model.save(tmp_path / "clf")
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {"model.safetensors", "config.json"}
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert saved["format_version"] == 1 and saved["channels"] == C and saved["class_names"] == list(PUBLISHED_CLASSES)
    maps, steps = random_maps(), torch.tensor([1, 3, 5])
    for path in (tmp_path / "clf", tmp_path / "clf" / "model.safetensors"):
        loaded = RelationClassifier.load(path)
        assert not loaded.training
        assert loaded.config == model.config and loaded.config.layer_layout == layout
        with torch.no_grad():
            assert torch.equal(loaded(maps, steps), model(maps, steps))


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


def test_missing_and_corrupt_files_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        RelationClassifier.load(tmp_path / "nowhere")
    model = tiny_model()
    directory = tmp_path / "clf"
    model.save(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        RelationClassifier.load(directory)
    model.save(directory)
    (directory / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupt classifier weights"):
        RelationClassifier.load(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no model.safetensors"):
        RelationClassifier.load(directory)
    # weights that do not fit the config: one concise line naming the mismatch
    model.save(directory)
    config = json.loads((directory / "config.json").read_text())
    config["extractor_ff"] = 64
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="wrong shape: object_extractor.transformer.layers.0.linear1") as info:
        RelationClassifier.load(directory)
    assert "\n" not in str(info.value)


# --- published checkpoints ---------------------------------------------------------------------

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
