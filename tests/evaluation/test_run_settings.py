"""The settings that made a run's images, as ``l2s eval`` and ``l2s generate`` record them
(:mod:`l2s.evaluation.run_settings`): each command's record as earlier versions wrote it."""
from pathlib import Path
from types import SimpleNamespace

from l2s.evaluation.run_settings import STEERER_SETTINGS, eval_settings, image_settings, with_steerer_settings

EVAL_OPTIONS = {"model": "tiny", "classifier": None, "prompts": "shapes", "n_prompts": 2, "prompt_seed": 0,
                "steps": 4, "height": 64, "width": 64, "guidance": None, "schedule": "published", "dtype": "fp32",
                "relations": None, "execution": None, "lora": None, "out": "runs/x", "quiet": True}


def test_eval_records_its_named_settings_and_the_later_options_only_when_given(tmp_path):
    settings = eval_settings(EVAL_OPTIONS, {"classifier_digest": "abc"})
    assert list(settings) == ["model", "classifier", "prompts", "n_prompts", "prompt_seed", "steps", "height",
                              "width", "guidance", "schedule", "dtype", "classifier_digest"]   # no out, no quiet
    given = eval_settings({**EVAL_OPTIONS, "relations": "checks", "execution": "reference"}, {}, tmp_path / "a")
    assert (given["relations"], given["execution"], given["lora"]) == ("checks", "reference", str(tmp_path / "a"))
    assert "execution" not in eval_settings({**EVAL_OPTIONS, "execution": "fast"}, {})   # what runs before used


def test_the_loaded_steerers_choices_come_last():
    steerer = SimpleNamespace(sampling_options=lambda: {"steps": 4}, step_size=5.0, capture_backend_in_use="sdpa")
    settings = with_steerer_settings({"model": "tiny"}, steerer)
    assert list(settings) == ["model", *STEERER_SETTINGS]
    assert settings["engine"] is None and settings["capture_backend"] == "sdpa"


def test_generate_records_every_option_but_those_that_make_no_image(tmp_path):
    options = {"model": "tiny", "classifier": str(tmp_path), "out": "o", "steps": 2, "device": None,
               "capture_backend": None, "execution": "reference", "prompt_file": Path("p.txt")}
    settings = image_settings(options, {"out"})
    assert "out" not in settings and settings["prompt_file"] == "p.txt"
    assert settings["classifier"] == str(tmp_path.resolve()) and settings["device"]   # resolved, as they load
    assert settings["capture_backend"] is None            # a reference run's own attention computes the maps
