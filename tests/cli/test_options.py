"""One ``--dtype {auto,fp32,bf16,fp16}`` across commands (old spellings: hidden, warned), a lazy
``--device``, and ``eval`` on the shipped model by default, as ``generate``."""
import pytest
import torch

import l2s.cli.models as models
from l2s.cli import build_parser
from l2s.devices import weights_dtype
from l2s.cli.training import build_make_data_parser

MAKE_DATA = ["--source", "pairs", "--annotations", "pairs.jsonl", "--out", "maps"]


def parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("command", [["generate", "a cat left of a dog"], ["eval"]])
def test_generate_and_eval_share_dtype_and_device(command, capsys):
    args = parse(command)
    assert args.dtype == "auto" and args.device is None  # resolved when the command runs
    assert parse(command + ["--dtype", "bf16"]).dtype == "bf16"
    with pytest.raises(SystemExit):
        parse(command + ["--dtype", "float64"])
    assert parse(command + ["--torch-dtype", "bfloat16"]).dtype == "bf16"
    assert "--torch-dtype is deprecated; use --dtype bf16" in capsys.readouterr().err


def test_every_model_command_shows_the_one_dtype_flag_and_hides_old_spellings(capsys):
    texts = []
    for command in (["generate", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            parse(command)
        texts.append(capsys.readouterr().out)
    texts.append(build_make_data_parser().format_help())
    for text in texts:
        assert "--dtype {auto,fp32,bf16,fp16}" in text and "--torch-dtype" not in text


def test_make_data_dtype_is_the_weights_and_map_dtype_the_storage(capsys):
    args = build_make_data_parser().parse_args(MAKE_DATA + ["--dtype", "bf16", "--map-dtype", "fp32"])
    assert (args.dtype, args.map_dtype) == ("bf16", "fp32")
    assert capsys.readouterr().err == ""
    # The spellings of earlier releases: --torch-dtype NAME (weights), --dtype float16 (the maps' storage).
    args = build_make_data_parser().parse_args(MAKE_DATA + ["--torch-dtype", "bfloat16", "--dtype", "float32"])
    assert (args.dtype, args.map_dtype) == ("bf16", "fp32")
    err = capsys.readouterr().err
    assert "--torch-dtype is deprecated; use --dtype bf16" in err and "is now --map-dtype fp32" in err
    with pytest.raises(SystemExit):
        build_make_data_parser().parse_args(MAKE_DATA + ["--dtype", "int8"])


@pytest.mark.parametrize("model, said", [("tiny", "the tiny demo model"), ("tiny-sd", "the tiny demo model 'tiny-sd'")])
def test_make_data_refuses_a_dtype_its_tiny_models_would_ignore(model, said, tmp_path, capsys):
    from l2s.cli.training import make_data_main

    argv = ["--source", "pairs", "--annotations", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "maps")]
    assert make_data_main(argv + ["--model", model, "--dtype", "bf16"]) == 2   # they are built in fp32
    assert capsys.readouterr().err.strip() == (f"l2s: error: --dtype bf16: {said} runs in fp32 only (--dtype "
                                               "applies to --model PATH)")
    assert not (tmp_path / "maps").exists()


def test_auto_dtype_is_the_published_one_on_gpus_and_fp32_on_cpu():
    assert weights_dtype("auto", "cpu", "flux") == torch.float32
    assert weights_dtype("auto", "cuda", "flux") == torch.bfloat16
    assert weights_dtype("auto", "cuda:1", "sd") == torch.float32  # SD was published in fp32
    assert weights_dtype("fp16", "cpu", "sd") == torch.float16


@pytest.mark.parametrize("pipeline, device, given, resolved", [
    (None, "cpu", "auto", "fp32"), ("tiny", "cuda", "auto", "fp32"),         # built in fp32 wherever they run
    ("FluxPipeline", "cpu", "auto", "fp32"), ("FluxPipeline", "cuda", "auto", "bf16"),
    ("StableDiffusionPipeline", "cuda:1", "auto", "fp32"), ("FluxPipeline", "cuda", "fp16", "fp16")])
def test_auto_dtype_is_resolved_before_loading_as_runs_record_it(pipeline, device, given, resolved, tmp_path):
    model = pipeline
    if pipeline not in (None, "tiny"):
        (tmp_path / "model_index.json").write_text(f'{{"_class_name": "{pipeline}"}}')
        model = str(tmp_path)
    args = parse(["generate", "a cat left of a dog", "--dtype", given, "--device", device]
                 + ([] if model is None else ["--model", model]))
    assert models.resolve_dtype(args) == args.dtype == resolved


def test_generate_and_eval_know_every_tiny_model_make_data_knows():
    """One list of tiny names: each is checked as its kind of model before it loads, and runs in fp32."""
    from l2s.errors import UsageError

    def args(model, *options):
        return parse(["generate", "a cat left of a dog", "--model", model, *options])

    with pytest.raises(UsageError, match="--true-cfg applies to FLUX models"):
        models.check_family_options(args("tiny-sd", "--true-cfg", "2"))
    with pytest.raises(UsageError, match="--guidance does nothing on this model"):
        models.check_family_options(args("tiny", "--guidance", "3"))
    models.check_family_options(args("tiny-dev", "--guidance", "3"))   # dev-like: a guidance embedding
    with pytest.raises(UsageError, match="--dtype bf16: the tiny demo model 'tiny-dev' runs in fp32 only"):
        models.check_model_dtype(args("tiny-dev", "--dtype", "bf16"))
    assert models.resolve_dtype(args("tiny-sd", "--device", "cuda")) == "fp32"


@pytest.mark.parametrize("command", [["generate", "a cat left of a dog"], ["eval"]])
def test_eval_and_generate_default_to_the_shipped_model(command, monkeypatch):
    import l2s.models

    monkeypatch.setattr(l2s.models, "_shipped_model", lambda *a, **k: ("shipped", "shipped model"))
    args = parse(command)
    assert args.model is None
    assert models.load_steerer(args) == ("shipped", "shipped model")


THREADED = [["generate", "a cat left of a dog"], ["eval"], ["make-data"] + MAKE_DATA, ["train", "maps", "--out", "clf"],
            ["shapes", "bench", "--out", "b"], ["shapes", "grpo", "--out", "g", "--reward", "rule"]]


def _argparse_refusal(argv, capsys) -> str:
    """The stderr of a command line argparse refuses (exit code 2)."""
    from l2s.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", THREADED, ids=lambda c: " ".join(c[:2]))
def test_every_model_command_takes_threads_and_refuses_below_one(command, capsys):
    err = _argparse_refusal(command + ["--threads", "0"], capsys)
    assert "--threads: expected a whole number from 1 to 1024, got 0" in err


def test_generate_threads_set_torch_threads(tmp_path, monkeypatch, capsys):
    from l2s.cli import main

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    code = main(["generate", "a cat to the left of a dog", "--model", "tiny", "--steps", "1", "--no-baseline",
                 "--threads", "1", "--quiet", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert calls == [1]


def test_image_sides_are_checked_against_the_model_before_it_loads(tmp_path, monkeypatch, capsys):
    import l2s.cli.evaluate
    import l2s.cli.generate
    from l2s.cli import main

    for module in (l2s.cli.evaluate, l2s.cli.generate):
        monkeypatch.setattr(module, "load_steerer", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["generate", "a red circle to the left of a blue square", "--height", "33",
                 "--out", str(tmp_path / "g")]) == 2           # the shipped shapes model: sides of 2 pixels
    assert "l2s: error: --height must be a multiple of 2 for this model, got 33" in capsys.readouterr().err
    assert main(["eval", "--width", "31", "--out", str(tmp_path / "e")]) == 2
    assert "l2s: error: --width must be a multiple of 2 for this model, got 31" in capsys.readouterr().err


@pytest.mark.parametrize("pipeline, channels, multiple", [("FluxPipeline", [128, 256, 512, 512], 16),
                                                          ("StableDiffusionPipeline", [128, 256, 512, 512], 8),
                                                          ("FluxPipeline", None, None)])
def test_size_multiple_reads_the_vae_config(tmp_path, pipeline, channels, multiple):
    import json

    from l2s.pipelines.loading import size_multiple

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    if channels is not None:
        (tmp_path / "vae").mkdir()
        (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": channels}))
    assert size_multiple(tmp_path) == multiple


def test_model_folder_is_local_or_none_and_only_tiny_is_built_in_code(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from l2s.models import model_folder, weights_digests
    from l2s.shapes.recipes import shipped_assets

    monkeypatch.chdir(tmp_path)
    assert model_folder("tiny") is None and weights_digests("tiny") == {}
    assert model_folder(None) == shipped_assets().pipeline
    assert model_folder(str(tmp_path / "missing")) is None
    shutil.copytree(shipped_assets().pipeline, tmp_path / "tiny-shapes",
                    ignore=shutil.ignore_patterns("classifier*", "grpo*", "spatial*"))
    assert Path(model_folder("tiny-shapes")).resolve() == (tmp_path / "tiny-shapes").resolve()
    assert "model_digest" in weights_digests("tiny-shapes")   # a folder, whatever its name


OUT_COMMANDS = [["generate", "a cat left of a dog"], ["eval"], ["make-data"] + MAKE_DATA, ["train", "maps"],
                ["shapes", "bench"], ["shapes", "grpo", "--reward", "rule"], ["shapes", "make-data"],
                ["shapes", "reward-data", "--pairs", "1"], ["shapes", "train-model"]]


@pytest.mark.parametrize("command", OUT_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_empty_out_is_refused_not_taken_as_the_current_folder(command, capsys):
    err = _argparse_refusal(command + ["--out", " "], capsys)
    assert "argument --out: an empty path would write into the current folder" in err


def test_a_tilde_the_shell_left_in_out_is_the_home_folder(monkeypatch, tmp_path):
    # quoted, or after --out=, the shell leaves ~ alone: a folder named "~" here would be a trap
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse(["generate", "x", "--out", "~/runs"]).out == str(tmp_path / "runs")
    assert parse(["eval", "--out=~/runs"]).out == str(tmp_path / "runs")
