"""``l2s generate``: options checked before any work, reports that say what ran, doubtful steering named."""
import json
import os
from pathlib import Path

import pytest
import torch

import l2s.cli.generate
from l2s.classifier import RelationClassifier
from l2s.cli import main
from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.files import KIND_FILE
from l2s.pipelines import SteeringPipeline

TINY = ["--model", "tiny", "--quiet"]


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, [line for line in out.err.splitlines() if line.startswith("l2s:")]


def logged_warnings(caplog):
    """The library's warnings, as ``main`` prints them on stderr ("l2s: " + message); under pytest
    they reach its log capture instead."""
    return [f"l2s: {r.getMessage()}" for r in caplog.records if r.getMessage().startswith("warning:")]


def files(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(l2s.cli.generate, "load_steerer", lambda args: pytest.fail("loaded a model"))


@pytest.mark.parametrize("options, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-3"], "--steps must be a positive integer, got -3"),
    (["--height", "0"], "--height must be a positive integer, got 0"),
    (["--width", "100000"], "--width must be at most 4096 pixels, got 100000"),
    (["--steps", "100000000"], "--steps must be at most 1000, got 100000000"),
    (["--width", "-8"], "--width must be a positive integer, got -8"),
    (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
    (["--guidance", "-3"], "--guidance must be 0 or more, got -3.0"),
    (["--step-size", "0"], "--step-size must be a positive finite number, got 0.0"),
    (["--true-cfg", "-1"], "--true-cfg must be a positive number"),
    (["--seed", str(2 ** 64)], "--seed must be an integer in [0, 2**64)"),
    (["--device", "bogus"], "device 'bogus' is not a torch device"),
    (["--relations", ""], "--relations names no relation"),
    (["--dtype", "bf16"], "runs in fp32 only (--dtype applies to --model PATH)"),
    (["--no-steer", "--save-maps"], "--save-maps records the steered steps' maps: there are none with --no-steer"),
    pytest.param(["--device", "cuda"], "device 'cuda': CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--engine", "tensorrt", "--device", "cpu"],
     "--engine tensorrt: the tensorrt engine needs the model on CUDA; it is on cpu"),
])
@pytest.mark.parametrize("model", [[], TINY])   # the default shapes model too: nothing is ignored
def test_options_are_checked_before_any_work(options, message, model, no_model, tmp_path, capsys):
    code, lines = run(["generate", "a cat above a dog", "--out", str(tmp_path / "o"), *model, *options], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("l2s: error: ") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_native_capture_without_l2s_fast_is_refused_before_any_work(no_model, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "l2s_fast", None)      # as if it were never built
    code, lines = run(["generate", "a cat above a dog", "--out", str(tmp_path / "o"), *TINY, "--device", "cpu",
                       "--capture-backend", "native"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("l2s: error: --capture-backend native: l2s::selected_text_softmax on CPU needs the "
                               "native module l2s_fast")
    assert not (tmp_path / "o").exists()


def test_onnxruntime_in_bfloat16_is_refused_before_the_model_loads(no_model, tmp_path, capsys):
    code, lines = run(["generate", "a cat above a dog", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "m"),
                       "--device", "cpu", "--dtype", "bf16", "--engine", "onnxruntime", "--quiet"], capsys)
    assert code == 2 and lines == ["l2s: error: --engine onnxruntime: onnxruntime takes no bfloat16 (numpy has none): "
                                   "load the model in float32 to verify an export"]


def pipeline_configs(folder, class_name: str, guidance_embeds: bool | None = None):
    """A model folder as far as its configs go: what the checks before loading read."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if guidance_embeds is not None:
        (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": guidance_embeds}))
    return str(folder)


NO_GUIDANCE = ("l2s: error: --guidance does nothing on this model: its transformer has no guidance embedding (as "
               "FLUX.1-schnell's and the shapes world's); its classifier-free guidance is --true-cfg")


@pytest.mark.parametrize("model", ["shipped", "tiny", "schnell"])
def test_guidance_is_refused_before_loading_a_flux_model_without_guidance_embedding(model, no_model, tmp_path,
                                                                                      capsys):
    chosen = {"shipped": [], "tiny": ["--model", "tiny"],
              "schnell": ["--model", pipeline_configs(tmp_path / "m", "FluxPipeline", guidance_embeds=False),
                          "--classifier", str(tmp_path)]}[model]
    code, lines = run(["generate", "a red circle left of a blue square", "--guidance", "3.5",
                       "--out", str(tmp_path / "o"), *chosen], capsys)
    assert code == 2 and lines == [NO_GUIDANCE] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("options", [["--true-cfg", "2"], ["--lora", "shapes-grpo"], ["--engine", "compile"]])
def test_flux_only_options_are_refused_before_a_stable_diffusion_model_loads(options, no_model, tmp_path, capsys):
    model = pipeline_configs(tmp_path / "sd", "StableDiffusionPipeline")
    code, lines = run(["generate", "a cat above a dog", "--model", model, "--classifier", str(tmp_path),
                       "--out", str(tmp_path / "o"), *options], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"l2s: error: {options[0]} applies to FLUX models; ")


def test_guidance_passes_the_checks_on_a_flux_model_with_guidance_embedding(tmp_path):
    from l2s.cli import build_parser
    from l2s.cli.models import check_family_options

    model = pipeline_configs(tmp_path / "dev", "FluxPipeline", guidance_embeds=True)
    check_family_options(build_parser().parse_args(["generate", "a cat above a dog", "--model", model,
                                                    "--guidance", "3.5"]))


def test_an_unusable_out_is_refused_before_any_work(no_model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, lines = run(["generate", "a cat above a dog", "--out", str(tmp_path / "file"), *TINY], capsys)
    assert code == 2 and lines == [f"l2s: error: output folder {tmp_path / 'file'} is a file, not a folder"]
    if os.geteuid() != 0:                       # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, lines = run(["generate", "a cat above a dog", "--out", str(locked / "o"), *TINY], capsys)
        assert code == 2 and "cannot create the output folder" in lines[0]


def test_a_folder_of_the_users_is_refused_and_the_help_and_usage_say_so(no_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, lines = run(["generate", "a cat above a dog", "--out", ".", *TINY], capsys)
    assert code == 2 and len(lines) == 1 and "holds files l2s did not write (notes.txt)" in lines[0]
    assert "use an empty or new --out" in lines[0] and files(tmp_path) == ["notes.txt"]
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out_help = " ".join(capsys.readouterr().out.split("--out OUT", 2)[2].split("--restart")[0].split())
    usage = (Path(__file__).resolve().parents[2] / "docs" / "usage.md").read_text()
    usage = " ".join(usage.replace("`", "").split())
    for text in (out_help, usage):   # a new user learns it before meeting the refusal
        assert "holding files l2s did not write (--out . in a folder of yours" in text


def test_no_steer_generates_once_and_writes_no_steered_files(tmp_path, capsys, monkeypatch):
    calls = []
    original = SteeringPipeline.__call__
    monkeypatch.setattr(SteeringPipeline, "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    out = tmp_path / "o"
    (out).mkdir()
    (out / KIND_FILE).write_text("generate\n")                          # an earlier run of generate
    (out / "comparison.png").write_bytes(b"from an earlier run")
    code, lines = run(["generate", "a cat left of a dog", "--out", str(out), "--no-steer", "--steps", "2", *TINY],
                      capsys)
    assert code == 0 and len(calls) == 1
    assert files(out) == ["image.png", "report.json"]                 # the stale comparison is gone too
    report = json.loads((out / "report.json").read_text())
    assert report["steered"] is False and report["steered_reason"] == "disabled by --no-steer"
    assert report["note"] == "not steered: disabled by --no-steer" and not any("warning" in x for x in lines)


def test_rejected_updates_are_reported_as_not_steered_with_one_warning(tmp_path, capsys):
    out = tmp_path / "o"
    code, lines = run(["generate", "a cat left of a dog", "--out", str(out), "--step-size", "1e30", "--steps", "2",
                       *TINY], capsys)
    assert code == 0
    (warning,) = [x for x in lines if x.startswith("l2s: warning:")]
    assert warning.startswith("l2s: warning: not steered: every steering update was rejected")
    assert files(out) == ["image.png", "report.json"]                 # no comparison of identical images
    report = json.loads((out / "report.json").read_text())
    assert report["steered"] is False and report["non_finite_events"] >= 1 and report["steering_updates"] == 0


@pytest.mark.parametrize("prompt, said", [
    ("a red circle left of a red circle", "'red circle' occurs 2 times in the prompt: each mention is steered"),
    ("a \U0001F992 left of a dog", "the model's tokenizer has no token for '\U0001F992' (unknown token)"),
    ("a cat and a dog left of a tree", "'cat' is joined to 'dog' by 'and': only 'dog left of tree' is steered"),
])
def test_doubtful_objects_get_one_warning_line(prompt, said, tmp_path, capsys, caplog):
    code, lines = run(["generate", prompt, "--out", str(tmp_path / "o"), "--steps", "1", "--schedule", "front-loaded",
                       "--no-baseline", *TINY], capsys)
    assert code == 0
    (warning,) = [x for x in lines + logged_warnings(caplog) if x.startswith("l2s: warning:")]
    assert said in warning
    assert json.loads((tmp_path / "o" / "report.json").read_text())["warnings"] == [warning[len("l2s: warning: "):]]


def test_a_classifier_of_another_map_grid_gets_a_warning(tmp_path, capsys, caplog):
    import dataclasses

    pipe = tiny_flux_pipeline(seed=0)
    config = dataclasses.replace(tiny_classifier_for(pipe).config, orig_map_size=8)
    RelationClassifier(config).save(tmp_path / "clf8")
    code, lines = run(["generate", "a cat left of a dog", "--out", str(tmp_path / "o"), "--classifier",
                       str(tmp_path / "clf8"), "--height", "32", "--width", "32", "--steps", "1", "--schedule",
                       "front-loaded", "--no-baseline", *TINY], capsys)
    assert code == 0
    (warning,) = [x for x in lines + logged_warnings(caplog) if x.startswith("l2s: warning:")]
    assert "trained on maps of a 8x8 token grid, but this model at 32x32 px gives 16x16" in warning


def test_the_device_reaches_the_default_model(tmp_path, capsys, monkeypatch):
    import l2s.shapes

    seen = []
    original = l2s.shapes.load_shapes_steerer
    monkeypatch.setattr(l2s.shapes, "load_shapes_steerer", lambda *a, **k: seen.append(k["device"]) or original(*a, **k))
    code, _ = run(["generate", "a red circle left of a blue square", "--out", str(tmp_path / "o"), "--device", "cpu",
                   "--steps", "1", "--schedule", "front-loaded", "--no-baseline", "--quiet"], capsys)
    assert code == 0 and seen == ["cpu"]
