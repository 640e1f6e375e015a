"""l2s.reward.identity: a reward model is known by the folder it loads and its weights, however typed."""
from __future__ import annotations

from l2s.reward.identity import reward_identity, same_reward


def test_a_reward_folder_is_known_by_the_model_it_loads_and_its_weights(tmp_path, monkeypatch):
    best = tmp_path / "ss" / "best"
    (best / "tokenizer").mkdir(parents=True)
    (best / "model.safetensors").write_bytes(b"first")
    monkeypatch.chdir(tmp_path)
    named = reward_identity("ss")
    assert named.startswith(f"{best} (weights ") and reward_identity("ss/best/") == named == reward_identity(str(best))
    assert reward_identity("rule") == "rule"
    (best / "model.safetensors").write_bytes(b"retrained")           # retrained in place: another reward
    assert reward_identity("ss") != named and not same_reward(named, reward_identity("ss"))
    assert same_reward("ss/best", named) and same_reward("ss", named)   # recorded as typed, before
    assert not same_reward("other", named) and not same_reward("rule", named)
    assert same_reward(named, "ss") and same_reward(None, None) and not same_reward(None, named)   # either order



def test_a_reward_is_known_by_its_weights_not_its_model_card(tmp_path):
    # train-reward writes best/README.md when it ends: a rerun (another command, or from Python) rewrites it,
    # and a GRPO run or bench that recorded the model must still know it
    best = tmp_path / "ss" / "best"
    (best / "tokenizer").mkdir(parents=True)
    (best / "model.safetensors").write_bytes(b"weights")
    (best / "README.md").write_text("trained by: l2s shapes train-reward --out ss")
    recorded = reward_identity(str(tmp_path / "ss"))
    (best / "README.md").write_text("trained by: (train_reward_model called from Python)")
    assert reward_identity(str(tmp_path / "ss")) == recorded
    (best / "README.md").unlink()                      # a model trained before train-reward wrote one
    assert reward_identity(str(tmp_path / "ss")) == recorded


def test_a_named_reward_and_its_folder_are_one_reward_however_recorded(tmp_path, monkeypatch):
    shipped = tmp_path / "assets" / "spatial_score"
    (shipped / "tokenizer").mkdir(parents=True)
    (shipped / "model.safetensors").write_bytes(b"shipped")
    (tmp_path / "mine" / "tokenizer").mkdir(parents=True)
    (tmp_path / "mine" / "model.safetensors").write_bytes(b"mine")
    named = {"spatialscore": shipped}
    monkeypatch.chdir(tmp_path)
    by_path = reward_identity("assets/spatial_score/")
    # a run made with the path resumes with the name, and the other way round; old records as typed too
    assert same_reward(by_path, "spatialscore", named) and same_reward("spatialscore", by_path, named)
    assert same_reward("./assets/spatial_score", "spatialscore", named)
    assert not same_reward(by_path, "spatialscore")                             # without knowing the folder
    assert not same_reward(reward_identity("mine"), "spatialscore", named) and not same_reward("rule", by_path, named)
