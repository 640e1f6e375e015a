"""One ``--dtype {auto,fp32,bf16,fp16}`` across commands (old spellings: hidden, warned), a lazy
``--device``, and ``eval`` on the shipped model by default, as ``generate``."""
import pytest
import torch

import l2s.cli.models as models
from l2s.cli import build_parser
from l2s.cli.options import torch_dtype
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


def test_auto_dtype_is_the_published_one_on_gpus_and_fp32_on_cpu():
    assert torch_dtype("auto", "cpu", "flux") == torch.float32
    assert torch_dtype("auto", "cuda", "flux") == torch.bfloat16
    assert torch_dtype("auto", "cuda:1", "sd") == torch.float32  # SD was published in fp32
    assert torch_dtype("fp16", "cpu", "sd") == torch.float16


@pytest.mark.parametrize("command", [["generate", "a cat left of a dog"], ["eval"]])
def test_eval_and_generate_default_to_the_shipped_model(command, monkeypatch):
    monkeypatch.setattr(models, "_shipped_model", lambda args, true_cfg, step_size: ("shipped", "shipped model"))
    args = parse(command)
    assert args.model is None
    assert models._load_steerer(args) == ("shipped", "shipped model")
