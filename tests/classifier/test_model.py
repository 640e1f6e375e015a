"""The relation classifier: architecture, gradients, and our save/load format."""
from __future__ import annotations

import json
import math

import pytest
import torch

from l2s.classifier import RelationClassifier, preset
from l2s.errors import ClassifierMismatchError, ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

from .helpers import C, M, random_maps, tiny_model


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


def test_saved_weights_respect_the_umask(tmp_path, umask_022):
    tiny_model().save(tmp_path / "clf")   # safetensors' own save_file would make the weights 0600
    assert umask_022(tmp_path / "clf") == {"model.safetensors": 0o644, "config.json": 0o644}


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


def test_a_training_run_or_a_misspelt_local_path_is_named_as_such(tmp_path, monkeypatch):
    run = tmp_path / "run"
    tiny_model().save(run / "best")
    with pytest.raises(ModelLoadError, match=r"is a training run, not a classifier: use .*run/best"):
        RelationClassifier.load(run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^classifier not found: run/nonexist$"):   # "run" is a folder here
        RelationClassifier.load("run/nonexist")
