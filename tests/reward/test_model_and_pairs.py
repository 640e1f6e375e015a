"""SpatialScore's outputs and persistence, the reward-callable face, and the pair store."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from l2s.errors import L2SError, ModelLoadError
from l2s.files import DamagedFileError
from l2s.reward import (
    RewardFn,
    SpatialScore,
    SpatialScoreConfig,
    SpatialScorer,
    evaluate_judge,
    images_to_tensor,
    load_pairs,
    load_reward_model,
    pair_scores,
)
from l2s.reward.pairs import check_manifest, done_shards, shard_paths

from .conftest import TINY_MODEL, make_blob_pairs


def _model(tokenizer, **extra) -> SpatialScore:
    torch.manual_seed(0)
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=16,
                                **{**TINY_MODEL, **extra})
    return SpatialScore(config)


def test_the_model_scores_each_image_with_a_mean_and_a_finite_spread(tokenizer):
    model = _model(tokenizer)
    ids = tokenizer(["a blob on the left", "a blob"], padding="max_length", max_length=32, return_tensors="pt").input_ids
    mean, log_var = model(torch.rand(2, 3, 16, 16), ids)
    assert mean.shape == log_var.shape == (2,) and torch.isfinite(log_var).all()
    # The text is read: another prompt for the same image changes the score.
    image = torch.rand(1, 3, 16, 16).expand(2, -1, -1, -1)
    assert model(image, ids)[0][0] != model(image, ids)[0][1]


def test_grounding_returns_the_place_of_the_image_token_a_word_finds(tokenizer):
    from l2s.reward.model import Grounding

    config = SpatialScoreConfig(d_model=16, heads=2, channels=(8, 16, 16), image_size=16)   # a 4x4 grid
    layer = Grounding(config)
    pattern = torch.tensor([1.0, -1.0] * 8)   # mean 0, variance 1: LayerNorm leaves it as it is
    with torch.no_grad():
        for linear in (layer.query, layer.key, layer.value, layer.out):
            linear.weight.zero_(), linear.bias.zero_()
        layer.query.bias.copy_(6 * pattern)
        layer.key.weight.copy_(torch.eye(16))
        layer.out.weight[0, 16], layer.out.weight[1, 17] = 1.0, 1.0   # head 0's (x, y) -> features 0, 1
    image = torch.zeros(1, 16, 16)
    image[0, 6] = pattern   # grid row 1, column 2
    moved = layer(torch.zeros(1, 3, 16), image)
    assert torch.allclose(moved[0, :, :2], torch.tensor([0.25, -0.25]).expand(3, 2), atol=1e-3)
    assert torch.count_nonzero(moved[0, :, 2:]) == 0


def test_a_config_whose_convs_leave_no_grid_is_refused():
    with pytest.raises(L2SError, match="7 conv widths halve a 32-px image 6 times"):
        SpatialScoreConfig(image_size=32, channels=(8,) * 7)
    assert SpatialScoreConfig(image_size=32, channels=(8,) * 6).grid == 1
    with pytest.raises(L2SError, match="unknown SpatialScore design 'graph'"):
        SpatialScoreConfig(design="graph")
    with pytest.raises(L2SError, match="grounding layers belong to the joint design"):
        SpatialScoreConfig(design="relational", grounding_layers=1)


def test_the_relational_design_scores_each_parsed_clause(tmp_path):
    from l2s.reward.text import RELATIONS, prompt_batch
    from l2s.shapes import shapes_t5_tokenizer

    tokenizer = shapes_t5_tokenizer()
    torch.manual_seed(0)
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=16,
                                d_model=16, heads=2, text_layers=1, channels=(8, 16), design="relational")
    scorer = SpatialScorer(SpatialScore(config), tokenizer)
    prompts = ["a red circle to the left of a blue square", "a red circle above a green square and a blue square "
               "below a green square", "a red circle and a blue square"]
    batch = prompt_batch(tokenizer, prompts, 32)
    assert batch.relations.tolist() == [[RELATIONS.index("left of"), -1],
                                        [RELATIONS.index("above"), RELATIONS.index("below")], [-1, -1]]
    assert torch.allclose(batch.phrases.sum(-1)[batch.relations >= 0], torch.ones(3, 2))   # weights of a phrase sum to 1
    mean, log_var = scorer.score(torch.rand(3, 3, 16, 16), prompts)
    assert mean[0] < 0 and mean[1] < mean[0] and mean[2] == 0 and torch.isfinite(log_var).all()   # sum of log p per clause
    with pytest.raises(L2SError, match="reads a PromptBatch"):
        scorer.model(torch.rand(1, 3, 16, 16), batch.ids[:1])
    scorer.save_pretrained(tmp_path / "rm")
    images = torch.rand(3, 3, 16, 16)
    assert torch.allclose(load_reward_model(tmp_path / "rm")(images, prompts), scorer(images, prompts))


def test_a_grounded_model_saves_and_loads(tmp_path, tokenizer):
    scorer = SpatialScorer(_model(tokenizer, grounding_layers=2), tokenizer)
    scorer.save_pretrained(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.model.config.grounding_layers == 2 and len(loaded.model.grounding) == 2
    images, prompts = torch.rand(2, 3, 16, 16), ["a blob on the left", "a blob"]
    assert torch.allclose(loaded(images, prompts), scorer(images, prompts))


def test_save_and_load_round_trip(tmp_path, tokenizer, umask_022):
    scorer = SpatialScorer(_model(tokenizer, extra={"note": "x"}), tokenizer)
    scorer.save_pretrained(tmp_path / "rm")
    assert set(umask_022(tmp_path / "rm").values()) == {0o644}   # the weights too (save_file made them 0600)
    assert (tmp_path / "rm" / "model.safetensors").is_file() and (tmp_path / "rm" / "config.json").is_file()
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.model.config == scorer.model.config and isinstance(loaded, RewardFn)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)) for i in range(3)]
    prompts = ["a blob on the left", "a blob on the right", "a blob"]
    scores = loaded(images, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert torch.allclose(scores, scorer(images, prompts))
    with pytest.raises(ModelLoadError, match="tokenizer/ missing"):
        load_reward_model(tmp_path)
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / ".l2s.kind").write_text("grpo\n")
    with pytest.raises(ModelLoadError, match=r"it holds a GRPO run \('l2s shapes grpo'\); give a 'l2s shapes train"):
        load_reward_model(tmp_path / "grpo")
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_reward_model(tmp_path / "none")
    scorer.save_pretrained(tmp_path / "run" / "best")   # a train-reward run folder loads its best/
    assert torch.allclose(load_reward_model(tmp_path / "run")(images, prompts), scores)
    with pytest.raises(L2SError):
        loaded(images, prompts[:2])


def test_images_to_tensor_takes_pil_uint8_and_float_images_alike():
    array = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    from_pil = images_to_tensor([Image.fromarray(a) for a in array])
    from_uint8 = images_to_tensor(torch.from_numpy(array))
    assert from_pil.shape == (2, 3, 8, 8) and torch.equal(from_pil, from_uint8)
    assert torch.equal(images_to_tensor(from_pil), from_pil)
    assert images_to_tensor(from_pil, size=16).shape == (2, 3, 16, 16)
    # PIL images of several sizes are resized, as the docstring says (numpy could not stack them)
    mixed = [Image.fromarray(array[0]), Image.fromarray(array[1]).resize((12, 12))]
    assert images_to_tensor(mixed).shape == (2, 3, 8, 8)
    assert images_to_tensor(mixed, size=16).shape == (2, 3, 16, 16)


def test_pair_folders_read_back_by_split_and_skip_unfinished_shards(tmp_path):
    make_blob_pairs(tmp_path, n=64)
    every, train, heldout = load_pairs(tmp_path), load_pairs(tmp_path, "train"), load_pairs(tmp_path, "heldout")
    assert len(every) == 64 == len(train) + len(heldout) and {r["split"] for r in heldout.records} == {"heldout"}
    assert every.images.shape == (128, 16, 16, 3) and every.images.dtype == torch.uint8
    # The winner index of every record points at its own shard's image (offsets added).
    assert int(every.winner[40]) == 2 * 40 and int(every.loser[40]) == 2 * 40 + 1
    shard_paths(tmp_path, 5)[0].write_bytes(b"half")          # images of a shard killed before its pairs
    assert done_shards(tmp_path) == [0, 1] and len(load_pairs(tmp_path)) == 64
    shard_paths(tmp_path, 1)[0].write_bytes(b"torn")
    with pytest.raises(DamagedFileError):
        load_pairs(tmp_path)
    with pytest.raises(L2SError, match="other settings"):
        check_manifest(tmp_path, {"synthetic": "blobs", "seed": 1})


def _blob_judge(images, prompts):
    """Red mass in the half of the image the prompt names."""
    red = images[:, 0] - images[:, 1]
    left, right = red[..., :8].sum(dim=(1, 2)), red[..., 8:].sum(dim=(1, 2))
    return torch.stack([l if p.endswith("left") else r for l, r, p in zip(left, right, prompts)])


def test_a_judge_that_sees_the_blob_is_right_on_every_pair_and_its_opposite_on_none(tmp_path):
    make_blob_pairs(tmp_path, n=32)
    pairs = load_pairs(tmp_path)

    result = evaluate_judge(_blob_judge, pairs)
    assert result["prompt"]["all"]["accuracy"] == 1.0 and result["mirror"]["all"]["accuracy"] == 1.0
    assert set(result["prompt"]["flips"]) == {"1", "2-3"}
    inverted = evaluate_judge(lambda i, p: -_blob_judge(i, p), pairs, mirror=False)
    assert inverted["prompt"]["all"]["accuracy"] == 0.0
    ties = evaluate_judge(lambda i, p: torch.zeros(len(p)), pairs, mirror=False)
    assert ties["prompt"]["all"]["accuracy"] == 0.5 and ties["prompt"]["all"]["ties"] == 32


def test_dropped_object_pairs_count_as_their_own_group_and_never_in_the_mirror(tmp_path):
    make_blob_pairs(tmp_path, n=32, drop_every=3)
    pairs = load_pairs(tmp_path)
    drops = sum(r.get("kind") == "drop" for r in pairs.records)

    result = evaluate_judge(_blob_judge, pairs)
    assert result["prompt"]["flips"]["drop"]["n"] == drops > 0 and result["prompt"]["all"]["n"] == 32
    # Under "a" both images score 0: counted, the mirror's ties would pull it to 0.5 on those pairs.
    assert result["mirror"]["all"] == {**result["mirror"]["all"], "accuracy": 1.0, "n": 32 - drops}
    assert "drop" not in result["mirror"]["flips"]
    # Scored by hand under the perturbed prompts, a dropped-object pair would be nonsense: refused.
    with pytest.raises(L2SError, match=r"dropped- and duplicated-object pairs have no mirror .*pairs\.mirrorable\(\)"):
        pair_scores(_blob_judge, pairs, mirror=True)
    assert len(pair_scores(_blob_judge, pairs.mirrorable(), mirror=True)[0]) == 32 - drops


def test_presence_belongs_to_the_relational_design_and_survives_a_round_trip(tmp_path):
    from l2s.shapes import shapes_t5_tokenizer

    with pytest.raises(L2SError, match="presence belongs to the relational design"):
        SpatialScoreConfig(presence=True)
    tokenizer = shapes_t5_tokenizer()
    config = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=16, d_model=16, heads=2,
                  text_layers=1, channels=(8, 16), design="relational")
    torch.manual_seed(0)
    scorer = SpatialScorer(SpatialScore(SpatialScoreConfig(**config, presence=True)), tokenizer)
    assert scorer.model.relational.head[0].in_features == 6 * 2
    assert SpatialScore(SpatialScoreConfig(**config)).relational.head[0].in_features == 4 * 2
    prompts, images = ["a red circle to the left of a blue square"] * 2, torch.rand(2, 3, 16, 16)
    scorer.save_pretrained(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.model.config.presence and torch.allclose(loaded(images, prompts), scorer(images, prompts))
    # A folder saved before the option existed reads as without it.
    assert SpatialScoreConfig.from_dict(config).presence is False


def test_several_pair_folders_read_as_one(tmp_path):
    make_blob_pairs(tmp_path / "a", n=64)
    make_blob_pairs(tmp_path / "b", n=64)
    both, one = load_pairs([tmp_path / "a", tmp_path / "b"]), load_pairs(tmp_path / "a")
    assert len(both) == 128 and both.images.shape[0] == 2 * one.images.shape[0]
    # the second folder's indices point past the first folder's images, at the same pictures
    assert torch.equal(both.images[both.winner[64 + 5]], load_pairs(tmp_path / "b").images[one.winner[5]])
    assert len(load_pairs([tmp_path / "a", tmp_path / "b"], "heldout")) == 2 * len(load_pairs(tmp_path / "a", "heldout"))
    with pytest.raises(L2SError, match=r"missing is not a preference-pair folder \(no such folder\): give one that"):
        load_pairs([tmp_path / "a", tmp_path / "missing"])
    with pytest.raises(L2SError, match=r"a/shards is not a preference-pair folder \(manifest.json missing\)"):
        load_pairs(tmp_path / "a" / "shards")


def test_each_kind_of_loser_has_its_group_and_only_flips_are_mirrored():
    from l2s.reward.pairs import PairSet, group_label, pair_group

    records = [{"flips": 1}, {"flips": 3}, {"flips": 0, "kind": "drop"}, {"flips": 0, "kind": "duplicate"}]
    assert [group_label(pair_group(r)) for r in records] == ["1 flip", "2-3 flips", "dropped object",
                                                            "duplicated object"]
    pairs = PairSet(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                    torch.ones(4, dtype=torch.long), [{**r, "prompt": "p"} for r in records])
    assert [r["flips"] for r in pairs.mirrorable().records] == [1, 3]
