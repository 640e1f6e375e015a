"""``l2s generate`` on the tiny model and saved models, and every bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from l2s.cli import main
from l2s.classifier import RelationClassifier
from l2s.demo import tiny_classifier_config, tiny_classifier_for, tiny_flux_pipeline
from l2s.pipelines.loading import save_pipeline


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_tiny_end_to_end(tmp_path, capsys):
    code, _, err = run(["generate", "a cat to the left of a dog", "--model", "tiny",
                        "--out", str(tmp_path), "--quiet", "--seed", "1"], capsys)
    assert code == 0, err
    for name in ("image.png", "image_unsteered.png", "comparison.png", "report.json"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["relations"] == [{"subject": "cat", "relation": "left of", "object": "dog"}]
    assert report["steered"] is True
    assert len(report["steps"]["0"]) == 16                   # schnell reference: 16 forwards at step 0
    assert report["versions"]["torch"] == torch.__version__
    assert report["timings_s"]["total"] > 0


def test_generate_unsteerable_prompt_says_so(tmp_path, capsys):
    code, _, err = run(["generate", "a cat next to a dog", "--model", "tiny", "--out", str(tmp_path),
                        "--quiet"], capsys)
    assert code == 0
    assert "unsteered" in err
    assert not (tmp_path / "image_unsteered.png").exists()
    assert json.loads((tmp_path / "report.json").read_text())["steered"] is False


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    pipe = tiny_flux_pipeline(seed=0)
    save_pipeline(pipe, root / "pipe")
    tiny_classifier_for(pipe, seed=0).save(root / "good")
    wrong = RelationClassifier(tiny_classifier_config(channels=7))
    wrong.save(root / "wrong")
    return root


@pytest.mark.parametrize("argv, message", [
    (["generate", ""], "empty"),
    (["generate", "   "], "empty"),
    (["generate", "left of a dog"], "left of"),
    (["generate", "a cat above"], "above"),
    (["generate", "a cat above a dog " + "and a very long tail " * 150], "tokens"),
    (["generate", "a cat above a dog", "--model", "/nonexistent/model"], "model_index.json"),
    (["generate", "a cat above a dog", "--classifier", "/nonexistent/clf"], "nonexistent"),
])
def test_bad_input_fails_with_one_line(argv, message, capsys, tmp_path):
    code, out, err = run(argv + ["--out", str(tmp_path), "--quiet"], capsys)
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("l2s: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "image.png").exists()


def test_model_path_without_classifier_is_refused(saved, capsys, tmp_path):
    code, _, err = run(["generate", "a cat above a dog", "--model", str(saved / "pipe"),
                        "--out", str(tmp_path)], capsys)
    assert code == 2 and "--classifier" in err


def test_generate_from_saved_model_and_classifier(saved, capsys, tmp_path):
    code, _, err = run(["generate", "a cat above a dog", "--model", str(saved / "pipe"),
                        "--classifier", str(saved / "good"), "--dtype", "fp32", "--device", "cpu",
                        "--out", str(tmp_path), "--quiet", "--no-baseline"], capsys)
    assert code == 0, err
    assert (tmp_path / "image.png").is_file() and not (tmp_path / "image_unsteered.png").exists()


def test_true_cfg_reaches_the_flux_pipeline_and_is_refused_for_sd(saved, capsys, tmp_path):
    from l2s.demo import tiny_sd_pipeline

    code, _, err = run(["generate", "a cat above a dog", "--model", str(saved / "pipe"),
                        "--classifier", str(saved / "good"), "--dtype", "fp32", "--device", "cpu",
                        "--true-cfg", "2", "--out", str(tmp_path / "flux"), "--quiet", "--no-baseline"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "flux" / "report.json").read_text())
    assert report["sampling"] == {"num_inference_steps": 4, "height": 32, "width": 32, "guidance_scale": None,
                                  "true_cfg_scale": 2.0, "negative_prompt": ""}
    assert (report["settings"]["model"], report["settings"]["classifier"]) == (str((saved / "pipe").resolve()),
                                                                           str((saved / "good").resolve()))
    assert report["settings"]["true_cfg"] == 2.0 and "model_digest" in report["settings"]
    sd = tiny_sd_pipeline(seed=0)
    save_pipeline(sd, tmp_path / "sd")
    tiny_classifier_for(sd, seed=0).save(tmp_path / "sd_clf")
    code, _, err = run(["generate", "a cat above a dog", "--model", str(tmp_path / "sd"),
                        "--classifier", str(tmp_path / "sd_clf"), "--dtype", "fp32", "--device", "cpu",
                        "--true-cfg", "2", "--out", str(tmp_path / "sd_out"), "--quiet"], capsys)
    assert code == 2 and "--true-cfg applies to FLUX" in err


def test_mismatched_classifier_is_refused(saved, capsys, tmp_path):
    code, _, err = run(["generate", "a cat above a dog", "--model", str(saved / "pipe"),
                        "--classifier", str(saved / "wrong"), "--dtype", "fp32", "--device", "cpu",
                        "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and "maps per object" in err


def test_corrupt_model_and_classifier_files_are_refused(saved, capsys, tmp_path):
    bad_model = tmp_path / "bad_model"
    bad_model.mkdir()
    (bad_model / "model_index.json").write_text("{not json")
    code, _, err = run(["generate", "a cat above a dog", "--model", str(bad_model),
                        "--classifier", str(saved / "good"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "corrupt" in err

    bad_clf = tmp_path / "bad_clf"
    bad_clf.mkdir()
    (bad_clf / "config.json").write_text("{}")
    (bad_clf / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run(["generate", "a cat above a dog", "--classifier", str(bad_clf),
                        "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and err.count("\n") >= 1 and "l2s: error:" in err


def test_the_cli_names_agree_with_the_library():
    from l2s.capture import CAPTURE_BACKENDS
    from l2s.cli.models import CAPTURE_BACKENDS as CLI_BACKENDS
    from l2s.cli.models import ENGINES, EXECUTION_MODES, SCHEDULES, SHIPPED_CLASSIFIER_NAMES
    from l2s.engines import ENGINE_KINDS
    from l2s.shapes.recipes import SHIPPED_CLASSIFIERS
    from l2s.steer import MODES, PRESETS

    assert SCHEDULES == tuple(PRESETS) and CLI_BACKENDS == tuple(CAPTURE_BACKENDS)
    assert ENGINES == tuple(ENGINE_KINDS) and SHIPPED_CLASSIFIER_NAMES == tuple(SHIPPED_CLASSIFIERS)
    assert sorted(EXECUTION_MODES) == sorted(MODES) and EXECUTION_MODES[0] == "fast"


def test_schedule_capture_backend_and_engine_reach_the_pipeline(tmp_path, capsys):
    code, _, err = run(["generate", "a cat to the left of a dog", "--model", "tiny", "--out", str(tmp_path),
                        "--quiet", "--no-baseline", "--schedule", "front-loaded", "--steps", "10",
                        "--capture-backend", "native", "--engine", "eager"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schedule"]["name"] == "front-loaded"
    assert report["schedule"]["iterations"] == [16] + [0] * 9       # schnell rule: step 0 only
    assert report["plain_step_engine"]["name"] == "eager"
    assert "requested explicitly" in report["plain_step_engine"]["reason"]
    assert report["execution"] == {"mode": "fast", "capture_backend": "native"}
    settings = report["settings"]        # the options that made it, as index.json keeps several images'
    assert {k: settings[k] for k in ("model", "schedule", "steps", "capture_backend", "engine", "dtype", "device")} \
        == {"model": "tiny", "schedule": "front-loaded", "steps": 10, "capture_backend": "native", "engine": "eager",
            "dtype": "fp32", "device": "cpu"}


def test_execution_mode_reaches_the_pipeline_and_impossible_ones_are_refused_first(tmp_path, capsys, monkeypatch):
    import l2s.cli.generate

    code, _, err = run(["generate", "a cat to the left of a dog", "--model", "tiny", "--out", str(tmp_path / "r"),
                        "--quiet", "--no-baseline", "--steps", "2", "--execution", "reference"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["execution"]["mode"] == "reference" and report["plain_step_engine"]["name"] == "eager"
    assert report["execution"]["capture_backend"] is None       # its own explicit attention, not sdpa
    monkeypatch.setattr(l2s.cli.generate, "load_steerer", lambda *a, **k: pytest.fail("loaded a model"))
    for extra, said in ((["--execution", "reference", "--engine", "compile"],
                         "--execution reference runs every step eagerly, as published: --engine compile needs a "
                         "fast --execution"),
                        (["--execution", "fast+cudagraphs", "--device", "cpu"],
                         "--execution fast+cudagraphs replays CUDA graphs: this run's device is cpu"),
                        (["--execution", "reference", "--capture-backend", "native"],
                         "--capture-backend native applies to the fast modes: --execution reference computes its "
                         "maps as the published code does")):
        code, _, err = run(["generate", "a cat above a dog", "--model", "tiny", "--out", str(tmp_path / "x"),
                            *extra], capsys)
        assert code == 2 and err.strip().splitlines()[-1] == f"l2s: error: {said}", err


def test_default_engine_is_eager_and_says_why(tmp_path, capsys):
    code, _, err = run(["generate", "a cat to the left of a dog", "--model", "tiny", "--out", str(tmp_path),
                        "--quiet", "--no-baseline", "--schedule", "fast"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schedule"]["name"] == "fast" and report["plain_step_engine"]["name"] == "eager"
    assert "no TensorRT plan (the one engine auto reuses) is cached" in report["plain_step_engine"]["reason"]


@pytest.mark.parametrize("option, value", [("--schedule", "fastest"), ("--capture-backend", "cuda"),
                                           ("--engine", "turbo"), ("--execution", "faster")])
def test_unknown_speed_options_are_refused(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a cat above a dog", "--model", "tiny", "--out", str(tmp_path), option, value])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_engine_is_refused_for_stable_diffusion(tmp_path, capsys):
    from l2s.demo import tiny_sd_pipeline

    sd = tiny_sd_pipeline(seed=0)
    save_pipeline(sd, tmp_path / "sd")
    tiny_classifier_for(sd, seed=0).save(tmp_path / "sd_clf")
    code, _, err = run(["generate", "a cat above a dog", "--model", str(tmp_path / "sd"),
                        "--classifier", str(tmp_path / "sd_clf"), "--dtype", "fp32", "--device", "cpu",
                        "--engine", "compile", "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and "--engine applies to FLUX" in err


def test_eval_takes_the_schedule_too(tmp_path, capsys, monkeypatch):
    from l2s.pipelines import SteeringPipeline

    asked, call = [], SteeringPipeline.__call__

    def spy(self, prompt, **kwargs):
        asked.append(kwargs.get("schedule"))
        return call(self, prompt, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", spy)
    out = tmp_path / "run"
    code = main(["eval", "--model", "tiny", "--prompts", "shapes", "--n-prompts", "1", "--seeds", "0", "--steps", "2", "--quiet",
                 "--mode", "steered", "--schedule", "early-exit", "--engine", "eager", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert asked == ["fast", "early-exit"]   # the untimed steered warm-up image (cheap preset), then the image
    assert json.loads((out / "summary.json").read_text())["settings"]["schedule"] == "early-exit"


def test_a_prompt_without_a_relation_warns_only_when_steering_was_asked_for(tmp_path, capsys):
    base = ["generate", "a cat", "--model", "tiny", "--steps", "1", "--quiet"]
    code, _, err = run(base + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "l2s: warning: no spatial relation found: generating unsteered" in err.splitlines()
    code, _, err = run(base + ["--no-steer", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "no spatial relation" not in err


@pytest.mark.parametrize("seeds", [None, "0-1"])
def test_the_unsteered_image_is_sampled_by_the_schedule_as_the_steered_one(seeds, tmp_path, capsys):
    # The shapes model's `fast` preset samples 7 of its 12 steps: its unsteered twin must too.
    prompt, many = "a red circle to the left of a blue square", ["--seeds", seeds] if seeds else ["--seed", "0"]
    for name, extra in (("steered", []), ("plain", ["--no-steer"])):
        code, _, err = run(["generate", prompt, "--schedule", "fast", *many, "--out", str(tmp_path / name),
                            "--quiet", *extra], capsys)
        assert code == 0, err
    folder = "p00-s0000" if seeds else "."
    twin = Image.open(tmp_path / "steered" / folder / "image_unsteered.png")
    plain = Image.open(tmp_path / "plain" / folder / "image.png")
    assert np.array_equal(np.asarray(twin), np.asarray(plain))
