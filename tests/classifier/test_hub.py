"""Classifiers on the hub's terms: save_pretrained / from_pretrained (folder or hub id through a local
cache made here, offline), the model card, the published converter, and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard

from l2s.classifier import RelationClassifier, convert_published_checkpoint
from l2s.errors import L2SError, ModelLoadError

from .helpers import C, random_maps, tiny_model
from .test_published import published_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRAINING = {"dataset": "/data/runs/gqa-flux-maps", "train_samples": 900, "val_samples": 150, "epoch": 40,
            "best_epoch": 31, "best_val_accuracy": 0.8734}


def same_logits(a: RelationClassifier, b: RelationClassifier) -> bool:
    maps, steps = random_maps(), torch.tensor([1, 3, 5])
    with torch.no_grad():
        return torch.equal(a(maps, steps), b(maps, steps))


def cached_snapshot(cache, repo_id: str):
    """The folder a download of ``repo_id`` at ``main`` fills, as huggingface_hub lays it out."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def test_save_pretrained_writes_our_format_and_a_card(tmp_path):
    model = tiny_model(seed=1)
    model.save_pretrained(tmp_path / "clf", model_card_kwargs={"training": TRAINING})
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "clf" / "config.json").read_text()) == model.config.to_json()
    card = ModelCard.load(tmp_path / "clf" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "l2s"
    assert f"{C} maps per object" in card.text and "`to the left of`" in card.text
    assert "validation accuracy: 0.873" in card.text and "`gqa-flux-maps` (900 training, 150 validation" in card.text
    assert "/data/runs" not in card.text  # no machine folder on a public card
    assert same_logits(model, RelationClassifier.from_pretrained(tmp_path / "clf"))


@pytest.mark.parametrize("record, said", [
    ({"epoch": 7, "best_epoch": 7, "max_epochs": 30}, "best epoch 7 of a run of at most 30 epochs"),   # best/
    ({"epoch": 12, "best_epoch": 7, "max_epochs": 30}, "best epoch 7 of 12 run"),                     # last/
    ({"epoch": 7, "best_epoch": 7}, "best epoch 7 (the lowest"),                     # a record without the limit
])
def test_the_card_does_not_say_the_best_epoch_was_the_last_one_run(record, said, tmp_path):
    """best/ is saved at its own epoch: its card once read "best epoch 7 of 7 run" in a 30-epoch run."""
    training = {**record, "best_val_loss": 0.5}
    tiny_model(seed=1).save_pretrained(tmp_path / "clf", model_card_kwargs={"training": training})
    text = (tmp_path / "clf" / "README.md").read_text()
    assert said in text and "of 7 run" not in text


def test_folders_written_by_save_still_load(tmp_path):
    model = tiny_model(seed=2)
    model.save(tmp_path / "old")
    for loaded in (RelationClassifier.from_pretrained(tmp_path / "old"), RelationClassifier.load(tmp_path / "old")):
        assert same_logits(model, loaded) and loaded.training_record is None


def test_training_record_travels_with_the_folder(tmp_path):
    model = tiny_model(seed=3)
    model.save(tmp_path / "run")
    (tmp_path / "run" / "training.json").write_text(json.dumps(TRAINING))  # what `l2s train` writes beside
    loaded = RelationClassifier.load(tmp_path / "run")
    assert loaded.training_record == TRAINING
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "training.json").read_text()) == TRAINING
    assert "validation accuracy: 0.873" in (tmp_path / "again" / "README.md").read_text()


def test_hub_id_loads_from_the_local_cache_offline(hub_cache):
    model = tiny_model(seed=4)
    model.training_record = TRAINING  # written as training.json beside the weights
    model.save_pretrained(cached_snapshot(hub_cache, "someone/l2s-clf"))
    for loaded in (RelationClassifier.from_pretrained("someone/l2s-clf"), RelationClassifier.load("someone/l2s-clf")):
        assert same_logits(model, loaded)
        assert loaded.training_record["best_val_accuracy"] == TRAINING["best_val_accuracy"]


def test_hub_id_missing_from_the_cache_is_one_line_saying_how_to_get_it(hub_cache):
    for load in (RelationClassifier.from_pretrained, RelationClassifier.load):
        with pytest.raises(ModelLoadError) as error:
            load("someone/absent")
        message = str(error.value)
        assert "\n" not in message and "`hf download someone/absent`" in message and str(hub_cache) in message


def test_a_cached_hub_id_loads_even_where_a_folder_has_its_owners_name(hub_cache, tmp_path, monkeypatch):
    model = tiny_model(seed=4)
    model.save_pretrained(cached_snapshot(hub_cache, "someone/l2s-clf"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone").mkdir()
    assert same_logits(model, RelationClassifier.load("someone/l2s-clf"))
    with pytest.raises(ModelLoadError, match=r"^classifier not found: someone/absent$"):   # a misspelt path
        RelationClassifier.load("someone/absent")


def test_push_to_hub_sends_nothing_offline(tmp_path, hub_cache):
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(L2SError, match=r"^cannot push to someone/l2s-clf: offline mode is on \(HF_HUB_OFFLINE\); save_"
                                       r"pretrained\(FOLDER\) now and run `hf upload someone/l2s-clf FOLDER`") as error:
        tiny_model().push_to_hub("someone/l2s-clf")
    assert isinstance(error.value.__cause__, OfflineModeIsEnabled)


def test_push_to_hub_where_the_hub_cannot_be_reached_is_one_line(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")     # refused at once, never the hub itself
    with pytest.raises(L2SError, match=r"^cannot push to someone/l2s-clf: the hub cannot be reached \(Connect"):
        tiny_model().push_to_hub("someone/l2s-clf", token="hf_test")


def test_published_converter_writes_a_hub_folder(tmp_path):
    source = tiny_model(seed=5)
    torch.save(published_checkpoint(source), tmp_path / "sd14.pth")
    out = convert_published_checkpoint(tmp_path / "sd14.pth", tmp_path / "converted", channels=C)
    assert {"README.md", "config.json", "model.safetensors", "training.json"} <= {p.name for p in out.iterdir()}
    assert "published Learn-to-Steer checkpoint sd14.pth" in (out / "README.md").read_text()
    assert same_logits(source, RelationClassifier.from_pretrained(out))


def test_a_cache_entry_given_as_the_folder_is_refused_naming_its_hub_id(hub_cache):
    tiny_model().save_pretrained(cached_snapshot(hub_cache, "someone/l2s-clf"))
    entry = hub_cache / "models--someone--l2s-clf"
    with pytest.raises(ModelLoadError, match=r"has no config\.json; it is a Hugging Face cache entry: give its hub id "
                                             r"someone/l2s-clf \(or a folder in its snapshots/\)$"):
        RelationClassifier.load(entry)


def test_a_cached_hub_id_without_training_record_loads_at_once_where_the_hub_cannot_be_reached(hub_cache,
                                                                                                 monkeypatch):
    import huggingface_hub.utils._http as http
    from huggingface_hub import constants

    model = tiny_model(seed=4)
    model.save_pretrained(cached_snapshot(hub_cache, "someone/l2s-clf"))     # no training.json
    unreachable = "http://127.0.0.1:9"                     # refused at once, never the hub itself
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", unreachable)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        unreachable + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(http.time, "sleep", lambda seconds: pytest.fail("retried a download of an optional file"))
    loaded = RelationClassifier.from_pretrained("someone/l2s-clf")
    assert same_logits(model, loaded) and loaded.training_record is None


def test_the_card_names_the_model_whose_maps_trained_it(tmp_path):
    # The shapes classifiers are sized from the schnell preset; their maps are the shapes world's.
    shapes = tiny_model(model_family="flux-schnell")
    shapes.save_pretrained(tmp_path / "shapes", model_card_kwargs={
        "training": {**TRAINING, "model": "shapes-world", "model_family": "flux-schnell"}})
    text = ModelCard.load(tmp_path / "shapes" / "README.md").text
    assert "# l2s relation classifier (shapes-world)" in text and "- trained on maps of `shapes-world`" in text
    flux = tiny_model(model_family="flux-dev")       # a machine's folder: its name alone, the family in the title
    flux.save_pretrained(tmp_path / "flux", model_card_kwargs={
        "training": {**TRAINING, "model": "/models/FLUX.1-dev", "model_family": "flux-dev"}})
    text = ModelCard.load(tmp_path / "flux" / "README.md").text
    assert "# l2s relation classifier (flux-dev)" in text and "- trained on maps of `FLUX.1-dev` (flux-dev)" in text
    assert "/models" not in text
    unrecorded = tiny_model(model_family="flux-dev")
    unrecorded.save_pretrained(tmp_path / "unrecorded", model_card_kwargs={"training": TRAINING})
    text = ModelCard.load(tmp_path / "unrecorded" / "README.md").text
    assert "# l2s relation classifier (flux-dev)" in text and "trained on maps of" not in text
