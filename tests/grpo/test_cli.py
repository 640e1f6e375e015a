"""``l2s shapes grpo`` end to end on a tiny model, and tuned adapters in ``generate`` and ``bench``."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import l2s.shapes as shapes_world
from l2s.cli import main
from l2s.grpo import add_lora

from .conftest import make_tiny_pipe


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny shapes model (16 px), a classifier shaped for it, and an adapter that changes its images."""
    from l2s.demo import tiny_classifier_for

    root = tmp_path_factory.mktemp("grpo-cli")
    pipe = make_tiny_pipe()
    pipe.save_pretrained(root / "model")
    tiny_classifier_for(pipe, seed=0, orig_map_size=4, timesteps=shapes_world.SHAPES_STORE_STEPS,
                        num_timesteps=shapes_world.SHAPES_STEPS).save(root / "clf")
    model = add_lora(pipe.transformer, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    model.save_pretrained(str(root / "strong" / "adapter"))
    return root


@pytest.mark.parametrize("command", [["shapes", "grpo"], ["shapes", "bench"], ["shapes", "train-reward"]])
def test_a_thread_count_below_one_is_a_usage_error(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--threads", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--threads: expected a whole number from 1 to 1024, got 0" in err


def test_top_k_and_no_top_k_cannot_both_be_given(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["shapes", "grpo", "--out", "o", "--reward", "rule", "--top-k", "3", "--no-top-k"])
    assert exit_.value.code == 2 and "argument --no-top-k: not allowed with argument --top-k" in capsys.readouterr().err


def test_no_progress_is_quiet_as_in_the_other_commands():
    from l2s.cli.grpo import build_grpo_parser

    parse = build_grpo_parser().parse_args
    base = ["--out", "o", "--reward", "rule"]
    assert parse(base + ["--no-progress"]).quiet and parse(base + ["--quiet"]).quiet and not parse(base).quiet


@pytest.mark.parametrize("argv, message", [
    (["--group-size", "8"], "at least 12"),
    (["--top-k", "13"], "--top-k must be between 1 and half the group (12), got 13"),
    (["--epochs", "0"], "--epochs must be positive, got 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--beta", "-1"], "--beta must be 0 or more, got -1.0"),
    (["--reward", "/nonexistent/reward"], "neither 'rule', 'spatialscore' nor"),
])
def test_bad_grpo_options_fail_with_one_line(saved, tmp_path, capsys, argv, message):
    base = ["shapes", "grpo", "--out", str(tmp_path / "out"), "--model", str(saved / "model"), "--reward", "rule"]
    code, _, err = run(base + argv, capsys)
    assert code == 2 and err.startswith("l2s: error:") and message in err and len(err.strip().splitlines()) == 1


def test_the_shipped_spatialscore_is_named_and_its_absence_is_one_line(monkeypatch):
    import l2s.shapes.recipes
    from l2s.cli.grpo import load_reward
    from l2s.errors import L2SError

    if l2s.shapes.shipped_assets().spatial_score.is_dir():
        assert load_reward("spatialscore", "cpu").model.config.design == "relational"
    monkeypatch.setattr(l2s.shapes.recipes, "SPATIAL_SCORE_DIR", "not_shipped")
    with pytest.raises(L2SError, match="--reward spatialscore: no SpatialScore ships in this installation"):
        load_reward("spatialscore", "cpu")


def test_grpo_cli_trains_an_epoch_and_its_adapter_loads_in_generate(saved, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["shapes", "grpo", "--out", str(out), "--model", str(saved / "model"), "--reward", "rule",
            "--epochs", "1", "--prompts-per-epoch", "1", "--group-size", "12", "--top-k", "3", "--quiet",
            "--keep-evaluated"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert (out / "evaluated" / "epoch-0001" / "adapter_model.safetensors").is_file()
    assert stdout == ""   # the summary is an l2s line on stderr, as every command's
    assert "l2s: 1 epoch; " in err and "eval_strict" in err and "eval_s " not in err
    assert err.rstrip().endswith(f"; curves in {out / 'curves.png'}") and (out / "curves.png").is_file()
    assert "resumed" not in err
    more = argv[:argv.index("--epochs") + 1] + ["2"] + argv[argv.index("--epochs") + 2:]
    code, stdout, err = run(more, capsys)    # --epochs 2 continues it
    assert code == 0 and f"l2s: resumed after epoch 1 of the earlier run in {out}" in err, err
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    description = json.loads((out / "grpo.json").read_text())
    assert description["settings"]["steps"] == shapes_world.SHAPES_STEPS
    assert description["settings"]["true_cfg"] == shapes_world.SHAPES_TRUE_CFG
    assert description["command"].startswith("l2s shapes grpo --out")
    code, _, err = run(["generate", "a red circle to the left of a blue square", "--model", str(saved / "model"),
                        "--classifier", str(saved / "clf"), "--lora", str(out), "--dtype", "fp32",
                        "--device", "cpu", "--out", str(tmp_path / "gen"), "--quiet", "--no-steer"], capsys)
    assert code == 0, err


def _generate(saved, tmp_path, capsys, name, *extra):
    code, _, err = run(["generate", "a red circle to the left of a blue square", "--model", str(saved / "model"),
                        "--classifier", str(saved / "clf"), "--dtype", "fp32", "--device", "cpu", "--no-steer",
                        "--out", str(tmp_path / name), "--quiet", *extra], capsys)
    assert code == 0, err
    return np.asarray(Image.open(tmp_path / name / "image.png"))


def test_generate_lora_changes_the_image_and_a_bad_adapter_is_one_line(saved, tmp_path, capsys):
    plain = _generate(saved, tmp_path, capsys, "plain")
    tuned = _generate(saved, tmp_path, capsys, "tuned", "--lora", str(saved / "strong"))
    assert not np.array_equal(plain, tuned)
    code, _, err = run(["generate", "a red circle to the left of a blue square", "--model", str(saved / "model"),
                        "--classifier", str(saved / "clf"), "--lora", str(tmp_path), "--out", str(tmp_path / "x"),
                        "--quiet"], capsys)
    assert code == 2 and "adapter_config.json missing" in err


def test_bench_lora_benches_the_tuned_model_and_keeps_its_images_apart(saved, tmp_path):
    from l2s.errors import L2SError

    kwargs = dict(pipeline_dir=saved / "model", classifier=saved / "clf", ablation_classifier=saved / "clf",
                  parts=["position"], position_prompts=1, seeds=(0,), progress=False)
    tuned = shapes_world.run_shapes_bench(tmp_path / "tuned", lora=saved / "strong", **kwargs)
    assert tuned["settings"]["lora"] == str(saved / "strong")
    plain = shapes_world.run_shapes_bench(tmp_path / "plain", **kwargs)
    assert plain["settings"]["lora"] is None

    def image(folder):
        path = folder / "position" / "base" / "00000" / "samples" / "0000.png"
        return np.asarray(Image.open(path))

    assert not np.array_equal(image(tmp_path / "tuned"), image(tmp_path / "plain"))
    with pytest.raises(L2SError, match="lora"):     # a tuned model's images are never mixed with the base's
        shapes_world.run_shapes_bench(tmp_path / "tuned", **kwargs)


def test_grpo_cli_trains_for_a_saved_spatial_score(saved, tmp_path, capsys):
    from l2s.reward import SpatialScore, SpatialScoreConfig, SpatialScorer
    from l2s.shapes import shapes_t5_tokenizer

    tokenizer = shapes_t5_tokenizer()
    torch.manual_seed(0)
    model = SpatialScore(SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                            image_size=16))
    SpatialScorer(model, tokenizer).save_pretrained(tmp_path / "score")
    out = tmp_path / "run"
    code, _, err = run(["shapes", "grpo", "--out", str(out), "--model", str(saved / "model"),
                        "--reward", str(tmp_path / "score"), "--epochs", "1", "--prompts-per-epoch", "1",
                        "--group-size", "12", "--no-top-k", "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["trained_rows"] == 12 and record["kept_fraction"] == 1.0     # a learned score has spread
    assert json.loads((out / "grpo.json").read_text())["settings"]["top_k"] is None


def test_the_shipped_adapter_loads_by_name_and_changes_the_image(tmp_path, capsys):
    images = []
    for name, extra in (("plain", ()), ("tuned", ("--lora", "shapes-grpo"))):
        code, _, err = run(["generate", "a red circle to the left of a blue square", "--no-steer", "--seed", "0",
                            "--out", str(tmp_path / name), "--quiet", *extra], capsys)
        assert code == 0, err
        images.append(np.asarray(Image.open(tmp_path / name / "image.png")))
        model = json.loads((tmp_path / name / "report.json").read_text())["model"]
        assert ("LoRA adapter" in model and "grpo_adapter" in model) == bool(extra)   # the report says which
    assert not np.array_equal(*images)


def test_eval_takes_a_lora_and_records_it_in_the_run(tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["eval", "--n-prompts", "1", "--seeds", "0", "--mode", "base", "--quiet", "--out", str(out)]
    code, _, err = run(argv + ["--lora", "shapes-grpo"], capsys)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["generation"]["lora"].endswith("grpo_adapter")
    code, _, err = run(argv, capsys)   # the same folder without the adapter: other settings, refused
    assert code == 2 and "lora" in err


def test_grpo_cli_refuses_to_resume_a_run_on_another_model(saved, tmp_path, capsys):
    # the same architecture loads silently: without the record, the adapter would train on two models
    from dataclasses import replace

    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    build_shapes_pipeline(replace(TINY_CONFIG, image_size=16), seed=1).save_pretrained(tmp_path / "other")
    argv = ["shapes", "grpo", "--out", str(tmp_path / "run"), "--reward", "rule", "--epochs", "1",
            "--prompts-per-epoch", "1", "--group-size", "12", "--quiet"]
    code, _, err = run(argv + ["--model", str(saved / "model")], capsys)
    assert code == 0, err
    argv[argv.index("--epochs") + 1] = "2"
    code, _, err = run(argv + ["--model", str(tmp_path / "other")], capsys)
    assert code == 2 and "holds a GRPO run of another base model (weights " in err
    assert len(err.strip().splitlines()) == 1
