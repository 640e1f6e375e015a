"""Shapes-world recipes (data, classifier, schedule, bench table, plot) and the shipped default."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import l2s.shapes.world as shapes_world
from l2s.evaluation import PairedComparison, geneval_relations
from l2s.relations import NEUTRAL, canonical_class


@pytest.fixture(scope="module")
def tiny_shapes_pipe():
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    torch.manual_seed(0)
    return build_shapes_pipeline(TINY_CONFIG, seed=0)


def test_relation_samples_hold_their_relation_and_leave_out_held_words():
    samples = shapes_world.shapes_relation_samples(40, seed=3, neutral_fraction=0.5)
    spatial = [s for s in samples if canonical_class(s.relation) != NEUTRAL]
    neutral = [s for s in samples if canonical_class(s.relation) == NEUTRAL]
    assert len(spatial) == 40 and neutral
    assert {canonical_class(s.relation) for s in spatial} == {"left of", "right of", "above", "below"}
    words = " ".join(f"{s.subject} {s.object}" for s in samples).split()
    assert "cyan" not in words and "diamond" not in words
    from l2s.shapes import ShapesDetector

    detector = ShapesDetector()
    for s in spatial[:10]:
        assert s.image.size == (32, 32)
        found = detector.detect(s.image, [s.subject, s.object])
        rels = geneval_relations(found[s.subject].box, found[s.object].box)
        assert canonical_class(s.relation) in rels
    for s in neutral:  # noun and its colour, from the same image as a spatial sample
        assert s.subject in ("circle", "square", "triangle") and s.object in ("red", "green", "blue", "yellow", "purple")
    # same seed, same samples
    again = shapes_world.shapes_relation_samples(40, seed=3, neutral_fraction=0.5)
    assert [s.key for s in again] == [s.key for s in samples]


def test_schedule_and_presets():
    from l2s.classifier import step_index_for

    reference = shapes_world.named_schedule("reference")
    # published rule for multi-step models: 16 iterations, step size 5, the first half of the steps
    assert reference.steered_steps == list(range(shapes_world.SHAPES_STEPS // 2))
    assert set(reference.iterations[: shapes_world.SHAPES_STEPS // 2]) == {16}
    assert set(reference.step_sizes) == {shapes_world.SHAPES_STEP_SIZE}
    assert set(shapes_world.named_schedule("fast", step_size=0.5).step_sizes) == {0.5}
    front = shapes_world.named_schedule("front-loaded")
    assert front.steered_steps == reference.steered_steps and front.max_forwards() < reference.max_forwards()
    # every steered step maps to a stored step index the classifier is trained on
    for step in reference.steered_steps:
        assert step_index_for(step, shapes_world.SHAPES_STORE_STEPS) in shapes_world.SHAPES_STORE_STEPS


def test_shapes_steerer_uses_the_worlds_sampling_settings(tiny_shapes_pipe, tmp_path):
    import l2s.cli.app as cli
    from l2s.shapes import is_shapes_pipeline
    from l2s.demo import tiny_flux_pipeline

    assert is_shapes_pipeline(tiny_shapes_pipe) and not is_shapes_pipeline(tiny_flux_pipeline(seed=0))
    classifier = _tiny_shapes_classifier(tiny_shapes_pipe)
    steerer = shapes_world.steer_shapes_pipeline(tiny_shapes_pipe, classifier)
    result = steerer("a red circle to the left of a blue square", progress=False)
    assert len(result.schedule.iterations) == shapes_world.SHAPES_STEPS
    assert result.schedule == shapes_world.named_schedule("reference")
    assert {r.step for r in result.diagnostics.records} == set(range(shapes_world.SHAPES_STEPS // 2))
    assert result.report()["sampling"]["true_cfg_scale"] == shapes_world.SHAPES_TRUE_CFG
    # --steps re-derives the published rule for that many steps (first half steered)
    eight = steerer("a red circle to the left of a blue square", num_inference_steps=8, progress=False)
    assert eight.schedule.steered_steps == [0, 1, 2, 3]
    # 'l2s generate/eval --model DIR' on a saved shapes model picks the same settings
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    classifier.save(tmp_path / "clf")
    args = cli.build_parser().parse_args(["generate", "x", "--model", str(tmp_path / "model"),
                                          "--classifier", str(tmp_path / "clf"), "--dtype", "fp32"])
    loaded, _ = cli._load(args)
    assert loaded.family == shapes_world.SHAPES_FAMILY and loaded.default_steps() == shapes_world.SHAPES_STEPS
    assert loaded.true_cfg_scale == shapes_world.SHAPES_TRUE_CFG
    loaded, _ = cli._load(cli.build_parser().parse_args(
        ["eval", "--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"), "--true-cfg", "1"]))
    assert loaded.true_cfg_scale == 1.0 and loaded.family == shapes_world.SHAPES_FAMILY
    assert loaded.step_size == shapes_world.SHAPES_STEP_SIZE
    loaded, _ = cli._load(cli.build_parser().parse_args(
        ["generate", "x", "--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"),
         "--step-size", "0.25"]))
    assert loaded.step_size == 0.25
    assert set(loaded("a red circle to the left of a blue square", progress=False).schedule.step_sizes) == {0.25}


def test_make_data_and_train_dual_and_ablation(tiny_shapes_pipe, tmp_path, capsys):
    from l2s.classifier import RelationClassifier
    from l2s.training import AttentionMapDataset, load_dataset_meta

    summary = shapes_world.make_shapes_data(tiny_shapes_pipe, tmp_path / "data", 12, seed=0, progress=False,
                                            val_fraction=0.3)
    meta = load_dataset_meta(tmp_path / "data")
    assert meta["store_steps"] == list(shapes_world.SHAPES_STORE_STEPS) and meta["map_size"] == 8
    assert meta["num_steps"] == shapes_world.SHAPES_STEPS
    records = AttentionMapDataset(tmp_path / "data", None).records
    assert summary.skipped == 0
    assert {r["prompt_type"] for r in records} == {"pos", "neg"}
    for r in records:
        if r["prompt_type"] == "neg":
            assert r["relation_word"] != r["label"]
    neutral = [r for r in records if r["label"] == "is"]
    assert all(r["prompt_type"] == "neg" or r["prompt"].count(" ") == 2 for r in neutral)

    small = dict(d_model=32, extractor_layers=1, head_layers=1, extractor_ff=32, head_ff=32, fc_dims=(16, 8))
    dual = shapes_world.train_shapes_classifier(tmp_path / "data", tmp_path / "dual", epochs=1, progress=False,
                                                **small)
    ablation = shapes_world.train_shapes_classifier(tmp_path / "data", tmp_path / "pos", dual=False, epochs=1,
                                                    progress=False, **small)
    model = RelationClassifier.load(dual.best_dir)
    assert model.config.timesteps == shapes_world.SHAPES_STORE_STEPS and model.config.d_model == 32
    assert model.config.map_size == 8 and model.config.num_timesteps == shapes_world.SHAPES_STEPS
    assert dual.history and ablation.history
    # the ablation sees only pos records: half as many
    train_dual = AttentionMapDataset(tmp_path / "data", "train", shapes_world.SHAPES_STORE_STEPS)
    train_pos = AttentionMapDataset(tmp_path / "data", "train", shapes_world.SHAPES_STORE_STEPS,
                                    prompt_types=("pos",))
    assert len(train_pos) * 2 == len(train_dual)

    # Leakage check: per-record hits on the held-out maps, paired between the two classifiers.
    from l2s.training import compare_classifiers, record_hits, relation_leakage

    hits = record_hits(model, tmp_path / "data", batch_size=5)  # several batches
    val = AttentionMapDataset(tmp_path / "data", "val", model.config.timesteps)
    assert len(val) > 10
    assert set(hits) == {"pos", "neg"} and sum(len(v) for v in hits.values()) == len(val)
    with torch.no_grad():
        direct = sum(int(model(m[None], torch.tensor([t])).argmax() == y) for m, t, y in val)
    assert sum(sum(v.values()) for v in hits.values()) == direct
    ablation_model = RelationClassifier.load(ablation.best_dir)
    comparison = compare_classifiers(model, ablation_model, tmp_path / "data")
    assert set(comparison) == {"pos", "neg"}
    assert comparison["neg"].n_pairs == len(hits["neg"]) and comparison["neg"].a_correct == sum(hits["neg"].values())
    itself = compare_classifiers(model, model, tmp_path / "data")["pos"]
    assert itself.a_only == itself.b_only == 0 and itself.p_value == 1.0
    # The bench's record of it: the same pairs, and each classifier's leakage on the same images.
    recorded = shapes_world.classifier_comparison({"dual": dual.best_dir, "pos_only": ablation.best_dir},
                                                  tmp_path / "data")
    assert recorded["by_prompt_type"]["neg"] == comparison["neg"].to_dict()
    leakage = relation_leakage(ablation_model, tmp_path / "data")
    assert recorded["leakage"]["pos_only"] == {step: c.to_dict() for step, c in leakage.items()}
    assert set(leakage) == {"all", *map(str, shapes_world.SHAPES_STORE_STEPS)}
    steps = [str(step) for step in shapes_world.SHAPES_STORE_STEPS]
    assert leakage["all"].n_pairs == len(hits["neg"]) == sum(leakage[step].n_pairs for step in steps)
    # bench/classifier_leakage.py prints and files the same numbers, a row per classifier and step index.
    capsys.readouterr()
    results = tmp_path / "leakage.md"
    assert _bench_module("classifier_leakage").main([
        "--data", str(tmp_path / "data"), "--classifiers", f"dual={dual.best_dir},pos-only={ablation.best_dir}",
        "--results", str(results)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pos-only | ")]
    assert len(rows) == 1 + len(shapes_world.SHAPES_STORE_STEPS)
    c = leakage["all"]
    assert rows[0].startswith(f"| pos-only | all | {c.n_pairs} | {c.a_correct / c.n_pairs:.3f} | "
                              f"{c.b_correct / c.n_pairs:.3f} | {(c.a_correct - c.b_correct) / c.n_pairs:+.3f} | "
                              f"{c.a_only} / {c.b_only} | ")
    filed = json.loads(results.with_suffix(".json").read_text())
    assert filed["leakage"]["pos-only"] == recorded["leakage"]["pos_only"]
    assert rows[0] in results.read_text()
    with pytest.raises(SystemExit, match="name=DIR,name=DIR; got 'oops'"):
        _bench_module("classifier_leakage").main(["--data", str(tmp_path / "data"), "--classifiers", "oops"])

    # The CLI reports the same per-prompt-type accuracy (the pos-only one is also scored on neg maps).
    capsys.readouterr()
    assert shapes_world.train_classifier_main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "cli"),
                                               "--no-dual", "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    counts = {kind: len(h) for kind, h in hits.items()}
    assert re.search(rf"val accuracy by prompt type: neg \d\.\d{{3}} \({counts['neg']}\), "
                     rf"pos \d\.\d{{3}} \({counts['pos']}\)", printed), printed
    leakage = re.search(r"best checkpoint, relation leakage \(val accuracy with the true word minus a wrong one, "
                        r"same images\): [+-]\d\.\d{3} \(p = .+\), right only with the true word \d+, only with a "
                        r"wrong one \d+; by step index: (.+)$", printed, re.MULTILINE)
    assert leakage, printed
    steps = [str(step) for step in shapes_world.SHAPES_STORE_STEPS]
    assert [part.split()[0] for part in leakage.group(1).split(", ")] == steps


def test_a_model_with_finer_tokens_goes_through_the_same_data_classifier_and_steering(tmp_path):
    """vae_factor 1 (tokens of 2x2 pixels): 16x16 maps from inversion to steering, no special case."""
    from dataclasses import replace

    from l2s.classifier import RelationClassifier
    from l2s.training import load_dataset_meta
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    pipe = build_shapes_pipeline(replace(TINY_CONFIG, vae_factor=1), seed=0)
    shapes_world.make_shapes_data(pipe, tmp_path / "data", 8, seed=0, progress=False, val_fraction=0.3)
    assert load_dataset_meta(tmp_path / "data")["map_size"] == 16
    small = dict(d_model=32, extractor_layers=1, head_layers=1, extractor_ff=32, head_ff=32, fc_dims=(16, 8))
    run = shapes_world.train_shapes_classifier(tmp_path / "data", tmp_path / "dual", epochs=1, progress=False,
                                               **small)
    classifier = RelationClassifier.load(run.best_dir)
    assert classifier.config.map_size == 16
    result = shapes_world.steer_shapes_pipeline(pipe, classifier)(
        "a red circle to the left of a blue square", progress=False)
    assert {r.step for r in result.diagnostics.records} == set(range(shapes_world.SHAPES_STEPS // 2))
    assert result.images[0].size == (32, 32)


def test_shapes_images_keep_their_size_whatever_the_classifier_grid():
    """A coarser-token model sampled beside the shipped classifier (16x16 maps) draws 32 px images,
    not the 64 px that the classifier's grid would imply at its 4x4-pixel tokens (how the
    found-rate script samples models other than the shipped one)."""
    from l2s.classifier import RelationClassifier
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    shipped = RelationClassifier.load(shapes_world.shipped_assets().classifier)
    assert shipped.config.orig_map_size == 16
    coarse = build_shapes_pipeline(TINY_CONFIG, seed=0)
    assert shapes_world.token_grid(coarse) == 8
    steerer = shapes_world.steer_shapes_pipeline(coarse, shipped)
    image = steerer("a red circle to the left of a blue square", steer=False, progress=False).images[0]
    assert image.size == (shapes_world.SHAPES_IMAGE_SIZE,) * 2


def test_a_model_trained_at_another_size_is_inverted_and_sampled_at_its_own_size(tmp_path):
    """The image side travels with the saved model (its VAE config), not the world's 32 px:
    make-data inverts scenes of that side and the steerer draws at it; the shipped model reads 32."""
    from dataclasses import replace

    from l2s.training import load_dataset_meta
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline, load_shapes_pipeline

    build_shapes_pipeline(replace(TINY_CONFIG, image_size=48), seed=0).save_pretrained(tmp_path / "model")
    pipe = load_shapes_pipeline(tmp_path / "model")
    assert (shapes_world.image_size(pipe), shapes_world.token_grid(pipe)) == (48, 12)
    shapes_world.make_shapes_data(pipe, tmp_path / "data", 4, seed=0, progress=False, val_fraction=0.3)
    meta = load_dataset_meta(tmp_path / "data")
    assert (meta["settings"]["size"], meta["orig_map_size"], meta["map_size"]) == (48, 12, 12)
    steerer = shapes_world.steer_shapes_pipeline(pipe, _tiny_shapes_classifier(pipe))
    image = steerer("a red circle to the left of a blue square", steer=False, progress=False).images[0]
    assert image.size == (48, 48)
    assert shapes_world.image_size(load_shapes_pipeline()) == shapes_world.SHAPES_IMAGE_SIZE
    # a folder saved before the VAE config had the field reads the world's 32
    vae_config = tmp_path / "model" / "vae" / "config.json"
    vae_config.write_text(json.dumps({k: v for k, v in json.loads(vae_config.read_text()).items()
                                      if k != "sample_size"}))
    assert shapes_world.image_size(load_shapes_pipeline(tmp_path / "model")) == shapes_world.SHAPES_IMAGE_SIZE


def test_probability_plot_draws_each_relation():
    from l2s.steer import IterationRecord

    records = [IterationRecord(step=s, iteration=k, relation=k % 2, loss=[1.0], target_probability=[p],
                               updated=True) for s, (k, p) in enumerate([(0, 0.1), (1, 0.2), (2, 0.8), (3, 0.95)])]
    image = shapes_world.probability_plot(records)
    pixels = np.asarray(image)
    assert image.size == (360, 200)
    red = ((pixels[..., 0] > 200) & (pixels[..., 1] < 80)).sum()
    blue = ((pixels[..., 2] > 200) & (pixels[..., 0] < 80)).sum()
    assert red > 10 and blue > 10
    assert np.asarray(shapes_world.probability_plot([])).std() > 0  # axes even with no records


def test_bench_table_reports_every_part_and_relation():
    part = lambda key, modes: {"key": key, "label": key, "n_prompts": 4, "seeds": [1], "schedule": "s",
                               "classifier": "dual", "modes": modes}
    base = {"accuracy": 0.25, "n_images": 4, "n_correct": 1, "per_relation": {"left of": [1, 2], "above": [0, 2]},
            "generate_s_per_image": 0.1, "colour_accuracy": 0.25, "colour_n_correct": 1,
            "colour_per_relation": {"left of": [1, 2], "above": [0, 2]}}
    steered = {"accuracy": 0.5, "n_images": 4, "n_correct": 2, "per_relation": {"left of": [2, 2], "above": [0, 2]},
               "generate_s_per_image": 0.5, "colour_accuracy": 0.75, "colour_n_correct": 3,
               "colour_per_relation": {"left of": [2, 2], "above": [1, 2]}}
    # Per-image correctness (keys "prompt/seed") for the paired comparisons.
    base["correct_by_image"] = {"0/1": True, "1/1": False, "2/1": False, "3/1": False}
    base["colour_correct_by_image"] = {"0/1": True, "1/1": False, "2/1": False, "3/1": False}
    steered["correct_by_image"] = {"0/1": True, "1/1": True, "2/1": False, "3/1": False}
    steered["colour_correct_by_image"] = {"0/1": True, "1/1": True, "2/1": True, "3/1": False}
    results = {"parts": [part("position", {"base": base, "steered": steered}),
                         part("ablation", {"steered": base, "base": base, "reference_dual": steered})], "settings": {}}
    table = shapes_world.bench_table(results)
    assert "0.250 (1/4)" in table and "0.750 (3/4)" in table and "3.00x" in table
    assert "| left of | 0.500 (1/2) | 1.000 (2/2) | 0.500 (1/2) | 1.000 (2/2) |" in table
    assert "| above | 0.000 (0/2) | 0.000 (0/2) | 0.000 (0/2) | 0.500 (1/2) |" in table
    ablation_row = next(line for line in table.splitlines() if line.startswith("| ablation"))
    assert ablation_row.count("0.750 (3/4)") == 1 and "1.00x" in ablation_row  # reference dual, same images
    summary = shapes_world.target_summary(results)
    assert "colour: base 0.250 (target <= 0.35: met), steered 0.750 (target >= 0.75: met; >= 3x base: 3.00x, met)" in summary
    # Two images right with dual only, none with pos-only only: p = 0.5, not measurable.
    assert ("dual vs pos-only classifier, colour, paired on 4 images: 0.750 vs 0.250; right with dual only 2, "
            "with pos-only only 0, sign test p = 0.5 (target dual measurably better, p < 0.05: missed)") in summary
    assert "steered vs base, two objects, strict, paired on 4 images: right only when steered 1, only in base 0" in summary
    results["classifier_comparison"] = {"split": "val", "by_prompt_type": {"neg": {
        "n_pairs": 200, "a_correct": 180, "b_correct": 160, "a_only": 25, "b_only": 5, "p_value": 0.0003}}}
    assert ("neg prompts, paired on 200 maps: 0.900 vs 0.800; right with dual only 25, with pos-only only 5, "
            "sign test p = 0.0003") in shapes_world.target_summary(results)
    def pairs(a, b, a_only, b_only):
        return PairedComparison(100, a, b, a_only, b_only).to_dict()

    results["classifier_comparison"]["leakage"] = {
        "dual": {"all": pairs(90, 89, 3, 2), "1": pairs(44, 44, 1, 1), "3": pairs(46, 45, 2, 1)},
        "pos_only": {"all": pairs(92, 70, 24, 2), "1": pairs(47, 30, 18, 1), "3": pairs(45, 40, 6, 1)}}
    summary = shapes_world.target_summary(results)
    assert ("- relation leakage of the pos-only classifier (held-out accuracy on an image's maps inverted with "
            "the true word minus with a wrong one, paired on 100 maps): +0.220, sign test p = 1.05e-05; by step index: "
            "1 +0.170 (p = 7.6e-05), 3 +0.050 (p = 0.12)") in summary
    assert "- relation leakage of the dual classifier (" in summary


def test_bench_records_its_sampling_and_resumes_only_with_it(tiny_shapes_pipe, tmp_path):
    from l2s.errors import L2SError

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    kwargs = dict(pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf", ablation_classifier=tmp_path / "clf",
                  parts=["position"], position_prompts=2, seeds=(0,), progress=False)
    results = shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=2.0, **kwargs)
    assert results["settings"]["sampling"] == {"true_cfg_scale": 2.0, "negative_prompt": ""}
    assert results["parts"][0]["modes"]["steered"]["n_images"] == 2
    # every image's found verdict is recorded, and is the image re-judged (so bench runs pair on it)
    from PIL import Image

    from l2s.evaluation import shapes_position_prompts
    from l2s.shapes import ShapesDetector

    steered = results["parts"][0]["modes"]["steered"]
    specs = shapes_position_prompts(n=2, seed=0)
    for key, found in steered["objects_found_by_image"].items():
        index, seed = key.split("/")
        path = tmp_path / "out" / "position" / "steered" / f"{int(index):05d}" / "samples" / f"{int(seed):04d}.png"
        with Image.open(path) as image:
            assert found == shapes_world.all_objects_found(ShapesDetector(), image.convert("RGB"), specs[int(index)])
    assert steered["objects_found"] == sum(steered["objects_found_by_image"].values()) / 2
    markdown = shapes_world.write_bench_results(results, tmp_path / "bench.md").read_text()
    assert "true CFG 2 against the empty caption (base and steered alike)" in markdown
    with pytest.raises(L2SError, match="sampling"):   # images made with other guidance are not mixed in
        shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=1.0, **kwargs)
    assert results["settings"]["step_size"] == shapes_world.SHAPES_STEP_SIZE
    with pytest.raises(L2SError, match="schedule"):   # nor images steered with another step size
        shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=2.0, step_size=0.5, **kwargs)
    gentle = shapes_world.run_shapes_bench(tmp_path / "gentle", true_cfg_scale=2.0, step_size=0.5,
                                           **{**kwargs, "parts": ["position", "ablation"]})
    assert gentle["settings"]["step_size"] == 0.5
    # The ablation steers only; it carries the two-object part's base and dual images, and says so.
    assert [(p["key"], p["copied_modes"]) for p in gentle["parts"]] == [
        ("position", []), ("ablation", ["base", "reference_dual"])]
    assert "steering step size 0.5" in shapes_world.write_bench_results(gentle, tmp_path / "g.md").read_text()


def test_colour_only_judges_colour_blobs():
    from l2s.evaluation import PromptSpec, RelationCheck

    spec = PromptSpec("a red circle to the left of a blue square", (RelationCheck("red circle", "left of", "blue square"),))
    colour = shapes_world.colour_only(spec)
    assert colour.prompt == spec.prompt and colour.objects == ("red", "blue")
    assert colour.checks[0].relation == spec.checks[0].relation


def test_ood_prompts_use_held_out_words():
    specs = shapes_world.ood_position_prompts(10)
    assert len(specs) == 10
    assert all({"cyan", "diamond"} & set(s.prompt.split()) for s in specs)


def test_generate_falls_back_loudly_without_assets(monkeypatch, tmp_path, capsys):
    import l2s.cli.app as cli

    monkeypatch.setattr(shapes_world, "shipped_assets", lambda root=None: shapes_world.ShippedAssets(
        tmp_path / "none", tmp_path / "none" / "c", tmp_path / "none" / "a"))
    assert cli.main(["generate", "a red circle to the left of a blue square", "--out", str(tmp_path / "o"),
                     "--quiet", "--no-baseline"]) == 0
    assert "tiny RANDOM demo model" in capsys.readouterr().err
    assert (tmp_path / "o" / "image.png").is_file()


# ---- the shipped model -------------------------------------------------------------------------

ASSETS = shapes_world.shipped_assets()
needs_assets = pytest.mark.skipif(not ASSETS.available,
                                  reason=f"shipped shapes model/classifier missing in {ASSETS.pipeline}")


@needs_assets
def test_shipped_model_steering_beats_base():
    from l2s.evaluation.runs import _score
    from l2s.shapes import ShapesDetector

    steerer = shapes_world.load_shapes_steerer()
    detector = ShapesDetector()
    from l2s.evaluation import shapes_position_prompts

    specs = shapes_position_prompts(n=16, seed=7)
    correct = {False: 0, True: 0}
    for index, spec in enumerate(specs):
        for steer in (False, True):
            image = steerer(spec.prompt, seed=500 + index, steer=steer, progress=False).images[0]
            # colour-only judging: it measures placement, which steering controls; shapes are the model's
            correct[steer] += _score(detector, image, shapes_world.colour_only(spec), "geneval", "t")[0].correct
    assert correct[True] > correct[False], correct


@needs_assets
def test_generate_default_writes_everything(tmp_path):
    import l2s.cli.app as cli

    out = tmp_path / "gen"
    assert cli.main(["generate", "a red circle to the left of a blue square", "--out", str(out), "--quiet"]) == 0
    for name in ("image.png", "image_unsteered.png", "comparison.png", "probability.png", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert "shapes" in report["model"]
    assert Image.open(out / "comparison.png").width >= 256 * 2
    assert Image.open(out / "image.png").size == (32, 32)


def _tiny_shapes_classifier(pipe):
    """A random relation classifier shaped for the shapes world's maps (8x8, its trained steps)."""
    from l2s.demo import tiny_classifier_for

    return tiny_classifier_for(pipe, seed=0, orig_map_size=8, timesteps=shapes_world.SHAPES_STORE_STEPS,
                               num_timesteps=shapes_world.SHAPES_STEPS)


def _bench_module(name: str):
    """``bench/<name>.py`` imported as a module (bench scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"l2s_bench_{name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_bench_script(name: str, argv: list[str], capsys) -> list[str]:
    """Run ``bench/<name>.py``'s main (it sets the thread count; restored after) and return its table rows."""
    module = _bench_module(name)
    threads = torch.get_num_threads()
    try:
        assert module.main(argv + ["--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]


def test_found_rate_script_compares_guidance_scales(tiny_shapes_pipe, tmp_path, capsys):
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    rows = _run_bench_script("shapes_found_rate", ["--model", str(tmp_path / "model"), "--true-cfg", "1,3",
                                                   "--prompt-seeds", "7", "--prompts-per-seed", "2", "--seeds", "2"],
                             capsys)
    assert rows[0].startswith("| true CFG") and rows[1].startswith("| 1 | ") and rows[2].startswith("| 3 | ")
    assert "/4)" in rows[2]
    # per-shape table: every object of the 4 images (2 per prompt) is counted under its shape once
    assert rows[3].startswith("| true CFG | ") and rows[3].endswith(" found |")
    shape_rows = rows[4:6]
    for row in shape_rows:
        assert sum(int(total) for _, total in re.findall(r"\((\d+)/(\d+)\)", row)) == 8
    # missed objects, per guidance and shape asked for: each miss counted once, under what it was drawn as
    shapes = re.findall(r"\| (\w+) found", rows[3])
    missed = rows[7:7 + 2 * len(shapes)]
    assert rows[6].startswith("| true CFG | missed objects: shape asked for | drawn as circle |")
    for row, shape_row in zip((missed[:len(shapes)], missed[len(shapes):]), shape_rows):
        hits = [(int(a), int(b)) for a, b in re.findall(r"\((\d+)/(\d+)\)", shape_row)]
        assert [sum(int(c) for c in line.strip("| ").split(" | ")[2:]) for line in row] == [b - a for a, b in hits]
    # base relation accuracy: colour and strict over the same 4 images, the second row paired
    accuracy = rows[7 + 2 * len(shapes):]
    assert accuracy[0].startswith("| true CFG | base colour accuracy |") and accuracy[0].count("|") == 8
    assert len(accuracy) == 3 and all(len(re.findall(r"\(\d+/4\)", row)) == 2 for row in accuracy[1:])
    assert accuracy[1].count("| - |") == 2 and accuracy[2].count("| - |") == 0


def test_found_rate_script_pairs_models_on_the_same_images(tiny_shapes_pipe, tmp_path, capsys):
    tiny_shapes_pipe.save_pretrained(tmp_path / "a")
    tiny_shapes_pipe.save_pretrained(tmp_path / "b")
    rows = _run_bench_script("shapes_found_rate", ["--model", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--true-cfg", "1",
                                                   "--prompt-seeds", "7", "--prompts-per-seed", "2", "--seeds", "2"],
                             capsys)
    assert rows[0].startswith("| model | true CFG |")
    assert all(row.count("|") == 6 for row in rows[:3])  # header, rule and rows have the same cells
    assert rows[1].startswith(f"| {tmp_path / 'a'} | 1 | ") and rows[2].startswith(f"| {tmp_path / 'b'} | 1 | ")
    # the same weights on the same (prompt, seed) pairs: the same rate, no image found in only one
    rate = re.findall(r"\(\d+/4\)", rows[1])
    assert rate and rate == re.findall(r"\(\d+/4\)", rows[2]) and "| 0 / 0 |" in rows[2]
    # ... and the same base relation accuracy, colour and strict
    accuracy_rows = rows[-3:]
    assert accuracy_rows[0].startswith("| model | true CFG | base colour accuracy |")
    assert all(row.count("|") == 9 for row in accuracy_rows)
    accuracy = re.findall(r"\(\d+/4\)", accuracy_rows[1])
    assert len(accuracy) == 2 and accuracy == re.findall(r"\(\d+/4\)", accuracy_rows[2])
    assert accuracy_rows[2].count("| 0 / 0 |") == 2


def test_found_rate_by_shape_counts_each_object_under_its_shape():
    from l2s.shapes import ShapesDetector

    found_rate = _bench_module("shapes_found_rate")
    found = {"0/0": {"red circle": True, "blue square": False},
             "0/1": {"red circle": False, "blue square": False},
             "1/0": {"green circle": True, "yellow triangle": True}}
    by_shape = found_rate.found_by_shape(found, ShapesDetector(), ("circle", "square", "triangle", "diamond"))
    assert by_shape == {"circle": (2, 3), "square": (0, 2), "triangle": (1, 1)}


def test_found_rate_samples_with_the_steps_asked_for(tiny_shapes_pipe):
    from l2s.evaluation import shapes_position_prompts
    from l2s.shapes import ShapesDetector

    found_rate = _bench_module("shapes_found_rate")
    steerer = shapes_world.steer_shapes_pipeline(tiny_shapes_pipe, _tiny_shapes_classifier(tiny_shapes_pipe))
    specs = shapes_position_prompts(n=1, seed=7)
    calls = []

    def recording(prompt, **kwargs):
        calls.append(kwargs["num_inference_steps"])
        return steerer(prompt, **kwargs)

    found, verdicts, missed = found_rate.judge_unsteered(recording, specs, [0], ShapesDetector(), steps=3)
    assert calls == [3] and list(found) == ["0/0"] and set(found["0/0"]) == set(specs[0].objects)
    assert list(verdicts) == ["0/0"] and set(verdicts["0/0"]) == set(shapes_world.VERDICTS)
    assert set(missed["0/0"]) == {label for label, ok in found["0/0"].items() if not ok}


def test_found_rate_names_what_a_missed_object_was_drawn_as():
    from l2s.shapes import Scene, SceneObject, ShapesDetector, render

    found_rate = _bench_module("shapes_found_rate")
    detector = ShapesDetector()
    # a red circle where a red diamond was asked for; no blue at all
    classes = detector.classify_pixels(render(Scene(size=32, objects=[SceneObject("circle", "red", (4, 4, 16, 16))])))
    assert found_rate.drawn_as(detector, classes, "red diamond") == "circle"
    assert found_rate.drawn_as(detector, classes, "blue square") == found_rate.NO_BLOB
    missed = {"0/0": {"red diamond": "circle", "blue square": found_rate.NO_BLOB}, "1/0": {"green diamond": "circle"}}
    assert found_rate.missed_by_shape(missed, detector) == {"diamond": {"circle": 2}, "square": {found_rate.NO_BLOB: 1}}


def test_step_size_script_compares_step_sizes_and_guidance(tiny_shapes_pipe, tmp_path, capsys, monkeypatch):
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    loaded = []
    load = shapes_world.load_shapes_steerer

    def recording_load(*args, **kwargs):
        loaded.append((kwargs["step_size"], kwargs["true_cfg_scale"]))
        return load(*args, **kwargs)

    monkeypatch.setattr(shapes_world, "load_shapes_steerer", recording_load)
    rows = _run_bench_script("shapes_step_size", ["--model", str(tmp_path / "model"), "--classifier",
                                                  str(tmp_path / "clf"), "--step-sizes", "5,0.5", "--true-cfg", "1,2",
                                                  "--prompts", "2", "--seeds", "1"], capsys)
    assert loaded == [(5.0, 1.0), (5.0, 2.0), (0.5, 1.0), (0.5, 2.0)]
    assert rows[0].startswith("| setting") and len(rows) == 5
    assert rows[1].startswith("| step size 5, true CFG 1 | ") and rows[4].startswith("| step size 0.5, true CFG 2 | ")
    assert all(row.count("/2)") == 3 and row.count("p = ") == 3 for row in rows[2:])
    assert rows[1].count("p = ") == 0
    loaded.clear()
    _run_bench_script("shapes_step_size", ["--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"),
                                           "--step-sizes", "0.5", "--prompts", "1", "--seeds", "1"], capsys)
    assert loaded == [(0.5, shapes_world.SHAPES_TRUE_CFG)]  # the shipped sampling unless asked otherwise


def test_leakage_steering_script_runs_each_classifier_under_each_schedule(tiny_shapes_pipe, tmp_path, capsys):
    import json

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "dual")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "pos")
    results = tmp_path / "leak.md"
    rows = _run_bench_script("shapes_leakage_steering", [
        "--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "dual"), "--ablation-classifier",
        str(tmp_path / "pos"), "--schedules", "reference,fast", "--prompts", "2", "--seeds", "3,4",
        "--results", str(results)], capsys)
    assert [row.split(" | ")[:2] for row in rows[1:]] == [
        ["| reference", "dual"], ["| reference", "pos_only"], ["| fast", "dual"], ["| fast", "pos_only"]]
    assert all(row.count("p = ") == 0 for row in rows[1::2]) and all(row.count("p = ") == 3 for row in rows[2::2])
    saved = json.loads(results.with_suffix(".json").read_text())
    assert saved["settings"]["seeds"] == [3, 4] and saved["settings"]["classifiers"]["pos_only"] == str(tmp_path / "pos")
    images = saved["images"]
    assert set(images["fast"]["dual"]) == {"0/3", "0/4", "1/3", "1/4"}
    # The schedule reaches the steering loop: the reference runs all 16 evaluations on each of the
    # 6 steered steps (it never exits early); fast (16 on steps 0-1, then 1 each) at most 36.
    assert shapes_world.named_schedule("reference").max_forwards() == 96
    assert shapes_world.named_schedule("fast").max_forwards() == 36
    assert all(v["evaluations"] == 96 for v in images["reference"]["dual"].values())
    assert all(v["evaluations"] <= 36 for v in images["fast"]["pos_only"].values())
    # Identical classifiers steer identically: the pairing compares like with like.
    assert images["reference"]["dual"] == {k: {**v, "seconds": images["reference"]["dual"][k]["seconds"]}
                                          for k, v in images["reference"]["pos_only"].items()}
    assert results.read_text().count("| fast | pos_only |") == 1


def test_leakage_steering_script_resumes_an_interrupted_run(tiny_shapes_pipe, tmp_path, capsys, monkeypatch):
    import json

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    results = tmp_path / "leak.md"
    argv = ["--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"), "--ablation-classifier",
            str(tmp_path / "clf"), "--schedules", "fast", "--prompts", "2", "--seeds", "3", "--results", str(results)]
    steer = shapes_world.steer_shapes_pipeline
    steered = []

    def counting(pipe, classifier, **kwargs):
        steerer = steer(pipe, classifier, **kwargs)

        def run(prompt, **kw):
            if limit is not None and len(steered) == limit:
                raise KeyboardInterrupt
            steered.append(prompt)
            return steerer(prompt, **kw)
        return run

    monkeypatch.setattr(shapes_world, "steer_shapes_pipeline", counting)
    limit = 3  # of 4 images: both of dual's, the first of pos-only's
    with pytest.raises(KeyboardInterrupt):
        _run_bench_script("shapes_leakage_steering", argv, capsys)
    partial = results.with_suffix(".partial.jsonl")
    assert len(partial.read_text().splitlines()) == 1 + 3 and not results.exists()
    # a run killed mid-write leaves a cut last line: that image is steered again, the rest kept
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-1] + [lines[-1][:20]]))
    limit, steered[:] = None, []
    rows = _run_bench_script("shapes_leakage_steering", argv, capsys)
    assert len(steered) == 2 and len(rows) == 3 and not partial.exists()
    images = json.loads(results.with_suffix(".json").read_text())["images"]["fast"]
    assert set(images["dual"]) == set(images["pos_only"]) == {"0/3", "1/3"}
    # the same classifier under both names: the resumed image matches the one steered before the break
    assert {k: {**v, "seconds": 0} for k, v in images["dual"].items()} == \
        {k: {**v, "seconds": 0} for k, v in images["pos_only"].items()}
    # a partial file from other settings is refused, not mixed in
    partial.write_text(json.dumps({"settings": {"prompts": 99}}) + "\n")
    with pytest.raises(SystemExit, match="other settings"):
        _run_bench_script("shapes_leakage_steering", argv, capsys)


def test_leakage_steering_script_steers_multi_relation_prompts(tiny_shapes_pipe, tmp_path, capsys, monkeypatch):
    import json

    from l2s.evaluation import shapes_multi_relation_prompts

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    steer = shapes_world.steer_shapes_pipeline
    prompts = []

    def recording(pipe, classifier, **kwargs):
        steerer = steer(pipe, classifier, **kwargs)

        def run(prompt, **kw):
            prompts.append(prompt)
            return steerer(prompt, **kw)
        return run

    monkeypatch.setattr(shapes_world, "steer_shapes_pipeline", recording)
    results = tmp_path / "leak.md"
    rows = _run_bench_script("shapes_leakage_steering", [
        "--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"), "--ablation-classifier",
        str(tmp_path / "clf"), "--schedules", "fast", "--multi", "3,2", "--prompt-seed", "5", "--prompts", "2",
        "--seeds", "3", "--results", str(results)], capsys)
    expected = [spec.prompt for spec in shapes_multi_relation_prompts(3, 2, n=2, seed=5)]
    assert prompts == expected * 2 and len(rows) == 3  # each classifier steers the multi prompts
    saved = json.loads(results.with_suffix(".json").read_text())
    assert saved["settings"]["prompt_set"] == "multi 3,2"
    assert set(saved["images"]["fast"]["dual"]) == {"0/3", "1/3"}


@pytest.mark.parametrize("multi, message", [("3", "OBJECTS,RELATIONS"), ("9,9", "no prompt pattern")])
def test_leakage_steering_script_refuses_a_bad_multi_pattern_before_work(multi, message, capsys):
    leak = _bench_module("shapes_leakage_steering")
    with pytest.raises(SystemExit):
        leak.main(["--multi", multi])
    assert message in capsys.readouterr().err


def test_leakage_steering_partial_results_survive_a_cut_line(tmp_path):
    leak = _bench_module("shapes_leakage_steering")
    path, settings = tmp_path / "r.partial.jsonl", {"prompts": 2}
    leak.PartialResults(path, settings).recorder("fast", "dual")("0/3", {"colour": True})
    path.write_text(path.read_text() + '{"schedule": "fast", "classif')  # killed mid-write
    leak.PartialResults(path, settings).recorder("fast", "dual")("1/3", {"colour": False})
    done = leak.PartialResults(path, settings).done
    assert done == {("fast", "dual"): {"0/3": {"colour": True}, "1/3": {"colour": False}}}


def test_leakage_steering_script_refuses_unknown_presets_before_work(capsys):
    leak = _bench_module("shapes_leakage_steering")
    with pytest.raises(SystemExit):
        leak.main(["--schedules", "fast,slowest"])
    assert "unknown schedule preset 'slowest'" in capsys.readouterr().err


def test_leakage_steering_table_pairs_images():
    leak = _bench_module("shapes_leakage_steering")

    def image(right: bool, evaluations: int = 16, first_p: float = 0.5) -> dict:
        return {"strict": right, "colour": right, "found": True, "evaluations": evaluations, "first_p": first_p,
                "seconds": 1.0}

    dual = {"0/0": image(True), "1/0": image(True), "2/0": image(False)}
    pos = {"0/0": image(False, 2, 0.95), "1/0": image(True, 4, 0.92), "2/0": image(True)}
    rows = leak.table({"fast": {"dual": dual, "pos_only": pos}})
    assert "0.667 (2/3); dual only 1, pos_only only 1, p = 1" in rows[3]
    assert rows[3].endswith("| 1.000 (3/3); dual only 0, pos_only only 0, p = 1 | 7.3 | 2/3 | 1.00 |")
    assert rows[2].endswith("| 16.0 | 0/3 | 1.00 |")


def _bench_results(verdicts: dict[str, bool], seeds=(100,)) -> dict:
    """A minimal `l2s shapes bench` results dict: one part, one mode, the same verdicts for both metrics."""
    mode = {"correct_by_image": dict(verdicts), "colour_correct_by_image": dict(verdicts)}
    return {"settings": {"seeds": list(seeds)},
            "parts": [{"key": "position", "n_prompts": len(verdicts), "modes": {"steered": mode}}]}


def test_compare_script_pairs_images_and_refuses_unpaired_runs(tmp_path, capsys):
    compare = _bench_module("shapes_compare")
    new = _bench_results({"0/100": True, "1/100": True, "2/100": False, "3/100": True})
    old = _bench_results({"0/100": False, "1/100": True, "2/100": True, "3/100": False})
    rows = compare.compare_results(new, old)
    assert [(r["part"], r["mode"], r["metric"]) for r in rows] == [("position", "steered", "strict"),
                                                                    ("position", "steered", "colour")]
    assert (rows[0]["a_correct"], rows[0]["b_correct"], rows[0]["a_only"], rows[0]["b_only"]) == (3, 2, 2, 1)
    with pytest.raises(ValueError, match="image seeds"):
        compare.compare_results(new, _bench_results({"0/101": True}, seeds=(101,)))

    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json")]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| position")]
    assert table == ["| position | steered | strict | 4 | 0.750 | 0.500 | 2 | 1 | 1 |",
                     "| position | steered | colour | 4 | 0.750 | 0.500 | 2 | 1 | 1 |"]


def test_compare_script_pairs_found_verdicts_where_both_runs_record_them():
    compare = _bench_module("shapes_compare")
    new = _bench_results({"0/100": True, "1/100": True})
    old = _bench_results({"0/100": True, "1/100": True})
    new["parts"][0]["modes"]["steered"]["objects_found_by_image"] = {"0/100": True, "1/100": True}
    assert [r["metric"] for r in compare.compare_results(new, old)] == ["strict", "colour"]  # old lacks it
    old["parts"][0]["modes"]["steered"]["objects_found_by_image"] = {"0/100": False, "1/100": True}
    found = compare.compare_results(new, old)[2]
    assert (found["metric"], found["a_correct"], found["b_correct"], found["a_only"]) == ("found", 2, 1, 1)


def test_compare_script_compares_copied_images_once():
    compare = _bench_module("shapes_compare")
    new = _bench_results({"0/100": True, "1/100": False})
    old = _bench_results({"0/100": False, "1/100": False})
    for results in (new, old):
        position = results["parts"][0]["modes"]["steered"]
        results["parts"][0]["modes"]["base"] = dict(position)
        # a part that only steers carries copies of the two-object part's base and dual-steered images
        results["parts"].append({"key": "ablation", "n_prompts": 2,
                                 "modes": {"steered": dict(position), "base": dict(position),
                                           "reference_dual": dict(position)}})
    rows = compare.compare_results(new, old)
    assert [(r["part"], r["mode"]) for r in rows[::2]] == [("position", "steered"), ("position", "base"),
                                                           ("ablation", "steered")]
    # Newer results say which modes are copies; that record is what counts.
    for results in (new, old):
        results["parts"][1]["copied_modes"] = ["base"]
    rows = compare.compare_results(new, old)
    assert [(r["part"], r["mode"]) for r in rows[::2]] == [("position", "steered"), ("position", "base"),
                                                           ("ablation", "steered"), ("ablation", "reference_dual")]


def test_bench_header_names_the_models_it_ran(tmp_path):
    assets = shapes_world.shipped_assets()
    part = {"key": "ood", "label": "held out", "n_prompts": 1, "seeds": [1], "schedule": "reference",
            "classifier": "dual", "modes": {}}
    settings = {"pipeline": str(assets.pipeline), "seeds": [1], "scale": 1.0, "position_prompts": 1,
                "classifiers": {"dual": str(assets.classifier), "pos_only": str(assets.ablation_classifier)}}
    shipped = shapes_world.write_bench_results({"parts": [part], "settings": settings}, tmp_path / "a.md")
    assert "Shipped shapes model + classifiers (`l2s/shapes/assets`)" in shipped.read_text()
    settings["pipeline"] = "/tmp/candidate"
    other = shapes_world.write_bench_results({"parts": [part], "settings": settings}, tmp_path / "b.md").read_text()
    assert "Shipped" not in other and "Shapes model `/tmp/candidate` with classifiers" in other
