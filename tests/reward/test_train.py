"""Training a SpatialScore: it learns a separable pair set, resumes, keeps validation apart from held-out."""
from __future__ import annotations

import json

import pytest
import torch

from l2s.errors import L2SError
from l2s.reward import RewardTrainSettings, evaluate_judge, load_pairs, load_reward_model, train_reward_model
from l2s.reward.train import _schedule, validation_split

from .conftest import TINY_MODEL, make_blob_pairs


def _settings(**overrides) -> RewardTrainSettings:
    base = dict(epochs=6, batch_size=16, lr=3e-3, warmup_steps=5, val_fraction=0.2, model=dict(TINY_MODEL))
    return RewardTrainSettings(**{**base, **overrides})


def test_schedule_warms_up_from_the_first_step_and_decays_to_zero_at_the_last():
    """Pinned because the libraries' cosine schedules differ (diffusers/transformers "cosine" start the
    warm-up at 0, "cosine_warmup_with_min_lr" decays one step earlier): swapping one in changes every run."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = _schedule(optimizer, warmup=4, total=10)
    factors = []
    for _ in range(11):
        factors.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert factors[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert factors[7] == pytest.approx(0.5) and factors[10] == 0.0


@pytest.mark.parametrize("loss", ["uncertainty", "bt"])
def test_training_learns_a_trivially_separable_pair_set(tmp_path, tokenizer, loss):
    make_blob_pairs(tmp_path / "pairs", n=192)
    heldout = load_pairs(tmp_path / "pairs", "heldout")
    results = train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(loss=loss), progress=False)
    assert results["finished"] and results["heldout_pairs"] == len(heldout) == 48
    trained = results["heldout"]["prompt"]["all"]["accuracy"]
    assert trained >= 0.9, results["heldout"]
    # Against the same architecture untrained (epoch 0 is not saved, so train zero steps' worth).
    log = [json.loads(line) for line in (tmp_path / "rm" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == list(range(1, 7)) and log[-1]["loss"] < log[0]["loss"]
    reloaded = evaluate_judge(load_reward_model(tmp_path / "rm" / "best"), heldout, mirror=False)
    assert reloaded["prompt"]["all"]["accuracy"] == trained


def test_mirroring_leaves_dropped_object_pairs_one_way(tmp_path, tokenizer):
    from l2s.reward import SpatialScore, SpatialScoreConfig, SpatialScorer
    from l2s.reward.train import _Examples

    make_blob_pairs(tmp_path, n=32, drop_every=3)
    pairs = load_pairs(tmp_path)
    drops = sum(r.get("kind") == "drop" for r in pairs.records)
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=16,
                                **TINY_MODEL)
    scorer = SpatialScorer(SpatialScore(config), tokenizer)
    assert len(_Examples(pairs, scorer, mirror=True)) == 2 * len(pairs) - drops and drops > 0
    assert len(_Examples(pairs, scorer, mirror=False)) == len(pairs)
    results = train_reward_model(tmp_path, tmp_path / "rm", tokenizer, _settings(epochs=1), progress=False)
    assert results["heldout"]["prompt"]["flips"]["drop"]["n"] == sum(
        r.get("kind") == "drop" and r["split"] == "heldout" for r in pairs.records)


def test_a_stopped_run_resumes_where_it_stopped_and_refuses_other_settings(tmp_path, tokenizer):
    make_blob_pairs(tmp_path / "pairs", n=64)
    first = train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=3), progress=False,
                               stop_after=1)
    assert first == {"finished": False, "epochs_done": 1, "epochs_before": 0}
    said = []
    done = train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=3), progress=False,
                              on_resume=said.append)
    straight = train_reward_model(tmp_path / "pairs", tmp_path / "again", tokenizer, _settings(epochs=3),
                                  progress=False, on_resume=said.append)
    # the fresh run says nothing
    assert said == [f"l2s: resumed after epoch 1 of the earlier run in {tmp_path / 'rm'}"]
    from PIL import Image

    with Image.open(tmp_path / "rm" / "curves.png") as curves:     # loss, accuracy, learning rate
        assert curves.width == 3 * 360
    log = lambda d: [json.loads(l) for l in (tmp_path / d / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log("rm")] == [1, 2, 3] and done["epochs_before"] == 1
    # Resumed and uninterrupted runs train alike: same losses epoch by epoch, same result.
    assert [round(r["loss"], 5) for r in log("rm")] == [round(r["loss"], 5) for r in log("again")]
    assert done["heldout"] == straight["heldout"]
    card = (tmp_path / "rm" / "best" / "README.md").read_text()     # a model card, as classifiers have
    accuracy = done["heldout"]["prompt"]["all"]["accuracy"]
    assert f"Held-out pairwise accuracy {accuracy:.3f} on {done['heldout_pairs']} pairs (1 flip " in card
    assert f"The model of epoch {done['best_epoch']}" in card and '"train_pairs"' in card
    with pytest.raises(L2SError, match="other settings"):
        train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=3, lr=1e-2), progress=False)
    with pytest.raises(L2SError, match=r"laid out for 3 epochs .* --epochs 3 to resume it, or --restart .* to train 5 "
                                       r"from the start"):
        train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=5), progress=False)
    train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=3), progress=False,
                       resume=False, stop_after=0)
    assert not (tmp_path / "rm" / "curves.png").exists()       # a start-over draws its own


def test_the_curves_draw_the_log_without_reading_it_every_epoch(tmp_path, tokenizer, monkeypatch):
    import l2s.reward.train as reward_train

    reads, drawn = [], []
    read_log, log = reward_train.read_log, tmp_path / "rm" / "log.jsonl"
    monkeypatch.setattr(reward_train, "read_log", lambda *a, **k: reads.append(a[0]) or read_log(*a, **k))
    # each picture draws exactly the rows the log file holds when it is drawn
    monkeypatch.setattr(reward_train, "save_curves", lambda out, rows, *a: drawn.append(
        ([dict(r) for r in rows], [json.loads(line) for line in log.read_text().splitlines()])))
    make_blob_pairs(tmp_path / "pairs", n=64)
    train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=5), progress=False,
                       stop_after=1)
    train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=5), progress=False)
    assert [[r["epoch"] for r in rows] for rows, _ in drawn] == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]]
    assert all(rows == in_file for rows, in_file in drawn)
    assert len(reads) == 3      # once per call before its epochs, once for the results: not once per epoch


def test_validation_pairs_are_whole_groups_of_the_training_split(tmp_path):
    make_blob_pairs(tmp_path, n=96)
    train, val = validation_split(load_pairs(tmp_path, "train"), 0.3, seed=0)
    assert len(val) > 0 and len(train) > 0
    assert not {r["objects"] for r in train.records} & {r["objects"] for r in val.records}
    assert {r["split"] for r in val.records} == {"train"}


def test_bad_settings_are_refused(tmp_path, tokenizer):
    make_blob_pairs(tmp_path / "pairs", n=32)
    for bad in (dict(loss="hinge"), dict(epochs=0), dict(val_fraction=1.0)):
        with pytest.raises(L2SError):
            train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(**bad), progress=False)
    with pytest.raises(L2SError):
        train_reward_model(tmp_path / "nothing", tmp_path / "rm", tokenizer, _settings(), progress=False)


def test_the_relational_design_refuses_prompts_it_cannot_read_before_touching_the_run(tmp_path, tokenizer):
    make_blob_pairs(tmp_path / "pairs", n=32)   # "a blob on the left": no clause a relational model reads
    model = {**TINY_MODEL, "design": "relational"}
    train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=1), progress=False)
    before = (tmp_path / "rm" / "log.jsonl").read_text()
    with pytest.raises(L2SError, match=r"\d+ training prompts have no left/right/above/below clause .* 'a blob on the"):
        train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=1, model=model),
                           progress=False, resume=False)
    assert (tmp_path / "rm" / "log.jsonl").read_text() == before   # the earlier run is intact


def test_the_best_epoch_is_the_one_best_holds():
    from l2s.reward.train import _best_epoch

    assert _best_epoch([{"epoch": 1, "val_accuracy": None}, {"epoch": 2, "val_accuracy": None}]) == 2  # no val
    assert _best_epoch([{"epoch": 1, "val_accuracy": 0.8}, {"epoch": 2, "val_accuracy": 0.9},
                        {"epoch": 3, "val_accuracy": 0.9}]) == 2       # the first to reach it: later ties are not saved
    assert _best_epoch([]) is None


def test_pairs_made_again_in_the_same_folder_are_other_settings(tmp_path, tokenizer):
    import shutil

    make_blob_pairs(tmp_path / "pairs", n=64)
    train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=2), progress=False,
                       stop_after=1)
    shutil.rmtree(tmp_path / "pairs")
    make_blob_pairs(tmp_path / "pairs", n=64, seed=1)      # same folder, same count, other pairs
    with pytest.raises(L2SError, match=r"other settings \(pairs_digest: '\w+' -> '\w+'\)"):
        train_reward_model(tmp_path / "pairs", tmp_path / "rm", tokenizer, _settings(epochs=2), progress=False)


def test_presence_without_a_design_names_the_design_it_would_get():
    """A model dict without "design" builds SpatialScoreConfig's default, the joint design: the
    refusal names that, not None."""
    from l2s.reward import SpatialScoreConfig

    default = SpatialScoreConfig.__dataclass_fields__["design"].default
    with pytest.raises(L2SError, match=rf"presence needs the relational design, not '{default}'$"):
        RewardTrainSettings(model={"presence": True}).check()
    RewardTrainSettings(model={"presence": True, "design": "relational"}).check()
