"""Shapes-world recipes (sampling settings, schedules, classifier data and training) and the shipped default."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import l2s.shapes as shapes_world
from l2s.cli.shapes_classifier import train_classifier_main
from l2s.evaluation import geneval_relations
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
    import l2s.cli as cli
    from l2s.cli.models import load_steerer
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
    loaded, _ = load_steerer(args)
    assert loaded.family == shapes_world.SHAPES_FAMILY and loaded.default_steps() == shapes_world.SHAPES_STEPS
    assert loaded.true_cfg_scale == shapes_world.SHAPES_TRUE_CFG
    loaded, _ = load_steerer(cli.build_parser().parse_args(
        ["eval", "--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"), "--true-cfg", "1"]))
    assert loaded.true_cfg_scale == 1.0 and loaded.family == shapes_world.SHAPES_FAMILY
    assert loaded.step_size == shapes_world.SHAPES_STEP_SIZE
    loaded, _ = load_steerer(cli.build_parser().parse_args(
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
    neutral = len(shapes_world.shapes_relation_samples(12, seed=0)) - 12   # scenes that also gave an "is" sample
    assert neutral > 0 and summary.samples_done == 12 + neutral     # more samples than scenes: the line says why
    said = f"from {12 + neutral} samples (12 scenes + {neutral} neutral 'is' sample{'s' * (neutral != 1)}; 0 skipped)"
    assert said in summary.line()
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
    # The CLI reports the same per-prompt-type accuracy (the pos-only one is also scored on neg maps).
    capsys.readouterr()
    assert train_classifier_main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "cli"),
                                               "--no-dual", "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().err
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


def test_generate_falls_back_loudly_without_assets(monkeypatch, tmp_path, capsys, caplog):
    import l2s.cli as cli

    monkeypatch.setattr(shapes_world, "shipped_assets", lambda root=None: shapes_world.ShippedAssets(
        tmp_path / "none", tmp_path / "none" / "c", tmp_path / "none" / "a"))
    assert cli.main(["generate", "a red circle to the left of a blue square", "--out", str(tmp_path / "o"),
                     "--quiet", "--no-baseline"]) == 0
    # a library warning: on stderr as "l2s: warning: ..." where nothing else set up logging (pytest does)
    assert "tiny RANDOM demo model" in capsys.readouterr().err + caplog.text
    assert (tmp_path / "o" / "image.png").is_file()
    def command(out: str) -> list[str]:
        return ["generate", "a red circle to the left of a blue square", "--seeds", "0-1", "--out",
                str(tmp_path / out), "--quiet", "--no-baseline", "--steps", "2"]

    several = command("several")
    assert cli.main(several) == 0
    monkeypatch.undo()   # the shipped model back: the stand-in's images do not resume as its own
    capsys.readouterr()
    assert cli.main(several) == 2
    assert "holds an earlier run with other settings (model_stand_in: tiny -> None)" in capsys.readouterr().err
    # nor the reverse: the shipped model's images do not resume as the stand-in's
    shipped = command("shipped")
    assert cli.main(shipped) == 0
    monkeypatch.setattr(shapes_world, "shipped_assets", lambda root=None: shapes_world.ShippedAssets(
        tmp_path / "none", tmp_path / "none" / "c", tmp_path / "none" / "a"))
    capsys.readouterr()
    assert cli.main(shipped) == 2
    refused = capsys.readouterr().err
    assert "holds an earlier run with other settings (" in refused and "model_stand_in: None -> tiny)" in refused


# ---- the shipped model -------------------------------------------------------------------------

ASSETS = shapes_world.shipped_assets()
needs_assets = pytest.mark.skipif(not ASSETS.available,
                                  reason=f"shipped shapes model/classifier missing in {ASSETS.pipeline}")


@needs_assets
def test_shipped_model_steering_beats_base():
    from l2s.evaluation import detect_and_score as _score
    from l2s.shapes import ShapesDetector

    steerer = shapes_world.load_shapes_steerer()
    detector = ShapesDetector()
    from l2s.shapes import shapes_position_prompts

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
    import l2s.cli as cli

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


def test_shipped_classifiers_load_by_name(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from l2s.cli import main
    from l2s.shapes.recipes import SHIPPED_CLASSIFIERS, classifier_folder, shipped_assets

    assert classifier_folder("shapes-pos-only") == shipped_assets().ablation_classifier
    assert classifier_folder("runs/clf") == "runs/clf" and classifier_folder(None) is None
    assert all((classifier_folder(name) / "config.json").is_file() for name in SHIPPED_CLASSIFIERS)
    from l2s.classifier import RelationClassifier

    layout = RelationClassifier.load(classifier_folder("shapes-k4")).config.layer_layout   # the first 4 blocks
    assert [entry[0] for entry in layout] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn",
                                              "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
    images = {}
    for name in ("shapes", "shapes-pos-only"):
        out = tmp_path / name
        assert main(["generate", "a red circle to the left of a blue square", "--classifier", name, "--seed", "0",
                     "--schedule", "fast", "--no-baseline", "--out", str(out), "--quiet"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert str(classifier_folder(name)) in report["model"]
        images[name] = np.asarray(Image.open(out / "image.png"))
    assert not np.array_equal(images["shapes"], images["shapes-pos-only"])   # another classifier steered


def test_a_shipped_name_resumes_an_eval_run_and_never_shadows_a_folder_or_hub_id(tmp_path, capsys, monkeypatch):
    from l2s.cli import main
    from l2s.cli.models import SHIPPED_CLASSIFIER_NAMES
    from l2s.shapes.recipes import classifier_folder, refuse_near_shipped_name

    argv = ["eval", "--n-prompts", "1", "--seeds", "0", "--mode", "base", "--classifier", "shapes-k4", "--quiet",
            "--out", str(tmp_path / "e")]
    assert main(argv) == 0 and main(argv) == 0, capsys.readouterr().err   # the same settings: resumed
    refuse_near_shipped_name("org/shapes", SHIPPED_CLASSIFIER_NAMES, "classifier")   # a hub id is no misspelt name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()
    assert classifier_folder("shapes") == "shapes"   # a folder of that name here wins


def test_a_misspelt_shipped_name_is_said_by_the_library_itself():
    """Python callers get the command line's "did you mean", not "no such folder"."""
    from l2s.errors import ModelLoadError
    from l2s.shapes import load_shapes_reward, load_shapes_steerer

    with pytest.raises(ModelLoadError, match=r"^classifier not found: shapes-k5 \(did you mean 'shapes-k4'\?\)$"):
        load_shapes_steerer(classifier="shapes-k5")
    with pytest.raises(ModelLoadError, match=r"LoRA adapter not found: shapes-grp \(did you mean 'shapes-grpo'\?\)"):
        load_shapes_steerer(lora="shapes-grp")
    with pytest.raises(ModelLoadError, match=r"^reward not found: spatialscor \(did you mean 'spatialscore'\?\)$"):
        load_shapes_reward("spatialscor")
    with pytest.raises(ModelLoadError, match=r"^reward model not found: spatialscor"):
        shapes_world.recipes.reward_model_path("spatialscor")


def test_generate_on_the_shapes_model_says_whether_each_image_shows_the_relation(tmp_path, capsys):
    from l2s.cli import main
    from l2s.shapes import prompt_verdict
    from l2s.shapes.scenes import render, scene_for_relation

    scene = scene_for_relation(np.random.default_rng(0), ("circle", "red"), "left of", ("square", "blue"), size=32)
    image = render(scene)
    assert prompt_verdict(image, "a red circle to the left of a blue square") is True
    assert prompt_verdict(image, "a red circle to the right of a blue square") is False
    assert prompt_verdict(image, "a cat to the left of a dog") is None          # not shapes-world objects
    assert prompt_verdict(image, "a red circle") is None                         # no relation to judge
    out = tmp_path / "g"
    assert main(["generate", "a red circle to the left of a blue square", "--schedule", "fast", "--out", str(out),
                 "--quiet"]) == 0
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    detector_says = {name: prompt_verdict(Image.open(out / f"{name}.png").convert("RGB"),
                                          "a red circle to the left of a blue square")
                     for name in ("image", "image_unsteered")}
    assert verdict == detector_says
    assert "l2s: shapes detector, GenEval rule: image.png " in capsys.readouterr().err


def test_each_relation_gets_its_verdict_and_two_objects_the_detector_cannot_tell_apart_get_none():
    from l2s.shapes import prompt_verdict, prompt_verdicts
    from l2s.shapes.scenes import render, scene_for_relation

    scene = scene_for_relation(np.random.default_rng(0), ("circle", "red"), "left of", ("square", "blue"), size=32)
    image = render(scene)
    verdict = prompt_verdicts(image, "a red circle left of a blue square and a blue square left of a red circle")
    assert verdict.holds is False and [r["holds"] for r in verdict.relations] == [True, False]
    assert verdict.relations[1]["reason"].startswith("found ")
    same = "a red circle left of a red circle and a red circle left of a blue square"
    verdict = prompt_verdicts(image, same)
    assert verdict.holds is None and prompt_verdict(image, same) is None           # was False, whatever was drawn
    assert [r["holds"] for r in verdict.relations] == [None, True]
    assert verdict.reason == verdict.relations[0]["reason"] and "cannot tell the two apart" in verdict.reason


def test_a_prompt_the_detector_can_never_judge_has_no_verdict_and_says_why(tmp_path, capsys):
    from l2s.cli import main

    out = tmp_path / "g"
    assert main(["generate", "a red circle left of a red circle", "--schedule", "fast", "--no-baseline",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "verdict" not in report and "cannot tell the two apart" in report["no_verdict"]
    assert [r["holds"] for r in report["relation_verdicts"]["image"]] == [None]
    assert f"l2s: shapes detector, GenEval rule: no verdict: {report['no_verdict']}" in capsys.readouterr().err


def test_a_multi_image_run_on_the_shapes_model_counts_the_images_that_show_their_relation(tmp_path, capsys):
    from l2s.cli import main

    out = tmp_path / "m"
    assert main(["generate", "a red circle to the left of a blue square", "a green triangle above a yellow square",
                 "--seeds", "0", "--schedule", "fast", "--no-baseline", "--out", str(out), "--quiet"]) == 0
    entries = json.loads((out / "index.json").read_text())["images"]
    holds = [e["verdict"]["image"] for e in entries]
    assert len(holds) == 2 and all("image_unsteered" not in e["verdict"] for e in entries)   # no baselines made
    assert f"l2s: shapes detector, GenEval rule: {sum(holds)} of 2 images show their prompt's relations" \
        in capsys.readouterr().err.splitlines()
    # each relation's verdict beside the image's, in index.json as in report.json
    assert [[r["holds"] for r in e["relation_verdicts"]["image"]] for e in entries] == [[h] for h in holds]
    report = json.loads((out / entries[0]["folder"] / "report.json").read_text())
    assert report["relation_verdicts"] == entries[0]["relation_verdicts"]


def test_the_relations_given_to_steer_are_the_ones_judged(tmp_path):
    from l2s.cli import main

    out, given = tmp_path / "g", "red circle,left of,green triangle;blue square,left of,green triangle"
    assert main(["generate", "a red circle and a blue square left of a green triangle", "--relations", given,
                 "--schedule", "fast", "--no-baseline", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())   # the parser reads only the blue square's
    judged = [(r["subject"], r["relation"], r["object"]) for r in report["relation_verdicts"]["image"]]
    assert judged == [tuple(item.split(",")) for item in given.split(";")]
    assert report["verdict"]["image"] == all(r["holds"] for r in report["relation_verdicts"]["image"])


def test_a_multi_image_run_counts_apart_the_prompts_that_can_never_be_judged(tmp_path, capsys):
    from l2s.cli import main

    out = tmp_path / "m"
    assert main(["generate", "a red circle to the left of a blue square", "a red circle left of a red circle",
                 "--seeds", "0", "--schedule", "fast", "--no-baseline", "--out", str(out), "--quiet"]) == 0
    first, second = json.loads((out / "index.json").read_text())["images"]
    assert "verdict" in first and "verdict" not in second and second["no_verdict"]
    assert (f"l2s: shapes detector, GenEval rule: {int(first['verdict']['image'])} of 1 images show their prompt's "
            f"relations; 1 without a verdict ({second['no_verdict']})") in capsys.readouterr().err.splitlines()


def test_weights_fingerprints_name_each_local_weight_and_skip_the_rest(tmp_path):
    from l2s.shapes.recipes import weights_fingerprints

    classifier = tmp_path / "clf"
    classifier.mkdir()
    (classifier / "config.json").write_text("{}")
    (classifier / "model.safetensors").write_bytes(b"w1")
    found = weights_fingerprints(tmp_path / "missing-pipeline", classifier / "config.json")
    assert set(found) == {"classifier_digest"}                     # no pipeline folder, no adapter: no keys
    assert found == weights_fingerprints(None, classifier)         # a classifier's file stands for its folder
    (classifier / "model.safetensors").write_bytes(b"w2")           # retrained at the same path
    assert weights_fingerprints(None, classifier) != found
    pipeline = tmp_path / "pipe"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    assert set(weights_fingerprints(pipeline, pipeline_key="pipeline_digest")) == {"pipeline_digest"}


# The shipped classifiers' fingerprints as runs recorded them before their training.json was shipped.
SHIPPED_CLASSIFIER_DIGESTS = {"shapes": "1d2a579e35034a09", "shapes-pos-only": "fd5df97291be1370",
                              "shapes-k4": "d3f9e22e721d63fa"}


def test_the_shipped_classifiers_name_the_shapes_model_and_keep_their_fingerprints(tmp_path):
    from huggingface_hub import ModelCard

    from l2s.classifier import RelationClassifier
    from l2s.shapes.recipes import SHIPPED_CLASSIFIERS, classifier_folder, weights_fingerprints

    for name in SHIPPED_CLASSIFIERS:
        classifier = RelationClassifier.load(classifier_folder(name))
        assert classifier.training_record["model"] == "shapes-world", name
        classifier.save_pretrained(tmp_path / name)
        card = ModelCard.load(tmp_path / name / "README.md").text
        assert "# l2s relation classifier (shapes-world)" in card and "- trained on maps of `shapes-world`" in card
        # Runs recorded these before the record was shipped beside the weights: they still resume.
        assert weights_fingerprints(classifier=name) == {"classifier_digest": SHIPPED_CLASSIFIER_DIGESTS[name]}


def test_wrap_pipeline_gives_a_shapes_model_its_own_settings_unless_told_otherwise(tiny_shapes_pipe):
    from l2s.demo import tiny_flux_pipeline
    from l2s.errors import L2SError
    from l2s.pipelines import wrap_pipeline

    classifier = _tiny_shapes_classifier(tiny_shapes_pipe)
    plain = wrap_pipeline(tiny_shapes_pipe, classifier)
    assert (plain.family, plain.default_steps(), plain.true_cfg_scale, plain.step_size) == (
        shapes_world.SHAPES_FAMILY, shapes_world.SHAPES_STEPS, shapes_world.SHAPES_TRUE_CFG,
        shapes_world.SHAPES_STEP_SIZE)
    assert plain.default_size() == shapes_world.image_size(tiny_shapes_pipe)
    told = wrap_pipeline(tiny_shapes_pipe, classifier, step_size=3.0, steps=4, true_cfg_scale=1.0)
    assert (told.default_steps(), told.true_cfg_scale, told.step_size) == (4, 1.0, 3.0)
    with pytest.raises(L2SError, match="not a shapes-world pipeline"):
        shapes_world.steer_shapes_pipeline(tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0), classifier)


def test_the_native_pipeline_takes_a_shapes_models_family_and_step_size_unless_told(tiny_shapes_pipe):
    from l2s.pipelines import FluxRelationSteeringPipeline

    classifier = _tiny_shapes_classifier(tiny_shapes_pipe)
    native = FluxRelationSteeringPipeline.from_pipe(tiny_shapes_pipe, classifier=classifier)
    built = FluxRelationSteeringPipeline(**tiny_shapes_pipe.components, classifier=classifier)
    for pipe in (native, built, FluxRelationSteeringPipeline.from_pipe(built)):
        assert pipe.steering_family() == shapes_world.SHAPES_FAMILY    # not schnell's: no guidance embedding
        schedule = pipe.steering_schedule_for("reference", shapes_world.SHAPES_STEPS)
        assert schedule.steered_steps == list(range(6)) and set(schedule.step_sizes) == {shapes_world.SHAPES_STEP_SIZE}
    told = FluxRelationSteeringPipeline.from_pipe(tiny_shapes_pipe, classifier=classifier, steering_step_size=2.0,
                                                  steering_family="flux-schnell")
    assert told.steering_family() == "flux-schnell" and told.steering_step_size() == 2.0


def test_the_native_pipeline_samples_a_shapes_model_as_it_was_trained_unless_told(tiny_shapes_pipe):
    """Size, steps and true CFG against the empty caption: the model's own for arguments not given."""
    import numpy as np

    from l2s.pipelines import FluxRelationSteeringPipeline

    native = FluxRelationSteeringPipeline.from_pipe(tiny_shapes_pipe, classifier=_tiny_shapes_classifier(tiny_shapes_pipe))
    native.set_progress_bar_config(disable=True)
    steps, side = [], shapes_world.image_size(tiny_shapes_pipe)
    record = lambda p, i, t, kw: steps.append(i) or kw     # noqa: E731
    prompt, seed = "a red circle to the left of a blue square", lambda: torch.Generator().manual_seed(0)
    default = native(prompt, steer=False, generator=seed(), output_type="np", callback_on_step_end=record).images
    told = native(prompt, steer=False, generator=seed(), output_type="np", height=side, width=side,
                  num_inference_steps=shapes_world.SHAPES_STEPS, true_cfg_scale=shapes_world.SHAPES_TRUE_CFG,
                  negative_prompt="").images
    assert default.shape[1:3] == (side, side) and len(steps) == shapes_world.SHAPES_STEPS
    assert np.array_equal(default, told)
    plain = native(prompt, steer=False, generator=seed(), output_type="np", true_cfg_scale=1.0).images
    assert not np.array_equal(default, plain)      # true CFG 1 asked: no guidance
    embeds, pooled, _ = native.encode_prompt(prompt="a green triangle", prompt_2=None)
    theirs = native(prompt, steer=False, generator=seed(), output_type="np", negative_prompt_embeds=embeds,
                    negative_pooled_prompt_embeds=pooled).images
    assert not np.array_equal(default, theirs)     # the caller's negative embeddings, not the empty caption's


def test_a_prompt_longer_than_the_t5_window_is_refused_before_any_encoder_runs(tiny_shapes_pipe, monkeypatch):
    """The window's error, from the planning of every prompt of a call (both surfaces), not from the
    T5 encoder after the CLIP one has run (and logged its own truncation notice)."""
    from l2s.errors import TokenizationError
    from l2s.pipelines import FluxRelationSteeringPipeline, wrap_pipeline

    classifier = _tiny_shapes_classifier(tiny_shapes_pipe)
    native = FluxRelationSteeringPipeline.from_pipe(tiny_shapes_pipe, classifier=classifier)
    encoded = []
    for pipe in (tiny_shapes_pipe, native):
        monkeypatch.setattr(pipe, "encode_prompt", lambda *args, **kwargs: encoded.append(kwargs["prompt"]))
    short, long = "a red circle left of a blue square", "a red circle left of a blue square" + " and a red circle" * 8
    with pytest.raises(TokenizationError, match="reads at most 32"):
        wrap_pipeline(tiny_shapes_pipe, classifier)([short, long], seed=[0, 1], progress=False)
    for steer in (True, False):
        with pytest.raises(TokenizationError, match="reads at most 32"):
            native([short, long], steer=steer)
    assert encoded == []


@needs_assets
def test_the_shipped_steerer_takes_the_speed_options():
    steerer = shapes_world.load_shapes_steerer(engine="eager", capture_backend="native", mode="fast+compiled")
    assert (steerer.engine_kind, steerer.capture_backend, steerer.mode.name) == ("eager", "native", "fast+compiled")
