"""The research scripts of experiments/scripts: each runs end to end on the tiny shapes model."""
from __future__ import annotations

import json
import re

import pytest
import torch

import l2s.shapes as shapes_world


@pytest.fixture(scope="module")
def tiny_shapes_pipe():
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    torch.manual_seed(0)
    return build_shapes_pipeline(TINY_CONFIG, seed=0)


def _tiny_shapes_classifier(pipe):
    """A random relation classifier shaped for the shapes world's maps (8x8, its trained steps)."""
    from l2s.demo import tiny_classifier_for

    return tiny_classifier_for(pipe, seed=0, orig_map_size=8, timesteps=shapes_world.SHAPES_STORE_STEPS,
                               num_timesteps=shapes_world.SHAPES_STEPS)


def _script_module(name: str):
    """``experiments/scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "experiments" / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"l2s_experiments_{name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(name: str, argv: list[str], capsys) -> list[str]:
    """Run ``experiments/scripts/<name>.py``'s main (it sets the thread count; restored after) and return its table rows."""
    module = _script_module(name)
    threads = torch.get_num_threads()
    try:
        assert module.main(argv + ["--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]


def test_classifier_leakage_script_files_what_the_library_measures(tiny_shapes_pipe, tmp_path, capsys):
    """classifier_leakage.py prints and files the bench's leakage numbers, a row per classifier and step index."""
    from l2s.classifier import RelationClassifier
    from l2s.training import relation_leakage

    shapes_world.make_shapes_data(tiny_shapes_pipe, tmp_path / "data", 12, seed=0, progress=False, val_fraction=0.3)
    small = dict(d_model=32, extractor_layers=1, head_layers=1, extractor_ff=32, head_ff=32, fc_dims=(16, 8))
    dual = shapes_world.train_shapes_classifier(tmp_path / "data", tmp_path / "dual", epochs=1, progress=False,
                                                **small)
    ablation = shapes_world.train_shapes_classifier(tmp_path / "data", tmp_path / "pos", dual=False, epochs=1,
                                                    progress=False, **small)
    recorded = shapes_world.classifier_comparison({"dual": dual.best_dir, "pos_only": ablation.best_dir},
                                                  tmp_path / "data")
    leakage = relation_leakage(RelationClassifier.load(ablation.best_dir), tmp_path / "data")
    capsys.readouterr()
    results = tmp_path / "leakage.md"
    assert _script_module("classifier_leakage").main([
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
        _script_module("classifier_leakage").main(["--data", str(tmp_path / "data"), "--classifiers", "oops"])


@pytest.mark.parametrize("missing", ["data", "classifier"])
def test_classifier_leakage_script_refuses_a_missing_input_in_one_line(tmp_path, capsys, missing):
    from l2s.shapes import shipped_assets

    classifier = tmp_path / "gone" if missing == "classifier" else shipped_assets().classifier
    data = tmp_path / "gone" if missing == "data" else tmp_path / "not-checked-yet"
    with pytest.raises(SystemExit) as exit_:
        _script_module("classifier_leakage").main(["--data", str(data), "--classifiers", f"a={classifier}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(tmp_path / "gone") in err and len(err.strip().splitlines()) == 1


def test_found_rate_script_compares_guidance_scales(tiny_shapes_pipe, tmp_path, capsys):
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    rows = _run_script("shapes_found_rate", ["--model", str(tmp_path / "model"), "--true-cfg", "1,3",
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
    rows = _run_script("shapes_found_rate", ["--model", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--true-cfg", "1",
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

    found_rate = _script_module("shapes_found_rate")
    found = {"0/0": {"red circle": True, "blue square": False},
             "0/1": {"red circle": False, "blue square": False},
             "1/0": {"green circle": True, "yellow triangle": True}}
    by_shape = found_rate.found_by_shape(found, ShapesDetector(), ("circle", "square", "triangle", "diamond"))
    assert by_shape == {"circle": (2, 3), "square": (0, 2), "triangle": (1, 1)}


def test_found_rate_samples_with_the_steps_asked_for(tiny_shapes_pipe):
    from l2s.shapes import shapes_position_prompts
    from l2s.shapes import ShapesDetector

    found_rate = _script_module("shapes_found_rate")
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

    found_rate = _script_module("shapes_found_rate")
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
    rows = _run_script("shapes_step_size", ["--model", str(tmp_path / "model"), "--classifier",
                                                  str(tmp_path / "clf"), "--step-sizes", "5,0.5", "--true-cfg", "1,2",
                                                  "--prompts", "2", "--seeds", "1"], capsys)
    assert loaded == [(5.0, 1.0), (5.0, 2.0), (0.5, 1.0), (0.5, 2.0)]
    assert rows[0].startswith("| setting") and len(rows) == 5
    assert rows[1].startswith("| step size 5, true CFG 1 | ") and rows[4].startswith("| step size 0.5, true CFG 2 | ")
    assert all(row.count("/2)") == 3 and row.count("p = ") == 3 for row in rows[2:])
    assert rows[1].count("p = ") == 0
    loaded.clear()
    _run_script("shapes_step_size", ["--model", str(tmp_path / "model"), "--classifier", str(tmp_path / "clf"),
                                           "--step-sizes", "0.5", "--prompts", "1", "--seeds", "1"], capsys)
    assert loaded == [(0.5, shapes_world.SHAPES_TRUE_CFG)]  # the shipped sampling unless asked otherwise


def test_leakage_steering_script_runs_each_classifier_under_each_schedule(tiny_shapes_pipe, tmp_path, capsys):
    import json

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "dual")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "pos")
    results = tmp_path / "leak.md"
    rows = _run_script("shapes_leakage_steering", [
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
        _run_script("shapes_leakage_steering", argv, capsys)
    partial = results.with_suffix(".partial.jsonl")
    assert len(partial.read_text().splitlines()) == 1 + 3 and not results.exists()
    # a run killed mid-write leaves a cut last line: that image is steered again, the rest kept
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-1] + [lines[-1][:20]]))
    limit, steered[:] = None, []
    rows = _run_script("shapes_leakage_steering", argv, capsys)
    assert len(steered) == 2 and len(rows) == 3 and not partial.exists()
    images = json.loads(results.with_suffix(".json").read_text())["images"]["fast"]
    assert set(images["dual"]) == set(images["pos_only"]) == {"0/3", "1/3"}
    # the same classifier under both names: the resumed image matches the one steered before the break
    assert {k: {**v, "seconds": 0} for k, v in images["dual"].items()} == \
        {k: {**v, "seconds": 0} for k, v in images["pos_only"].items()}
    # a partial file from other settings is refused, not mixed in
    partial.write_text(json.dumps({"settings": {"prompts": 99}}) + "\n")
    with pytest.raises(SystemExit, match="other settings"):
        _run_script("shapes_leakage_steering", argv, capsys)


def test_leakage_steering_script_steers_multi_relation_prompts(tiny_shapes_pipe, tmp_path, capsys, monkeypatch):
    import json

    from l2s.shapes import shapes_multi_relation_prompts

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
    rows = _run_script("shapes_leakage_steering", [
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
    leak = _script_module("shapes_leakage_steering")
    with pytest.raises(SystemExit):
        leak.main(["--multi", multi])
    assert message in capsys.readouterr().err


def test_leakage_steering_partial_results_survive_a_cut_line(tmp_path):
    leak = _script_module("shapes_leakage_steering")
    path, settings = tmp_path / "r.partial.jsonl", {"prompts": 2}
    leak.PartialResults(path, settings).recorder("fast", "dual")("0/3", {"colour": True})
    path.write_text(path.read_text() + '{"schedule": "fast", "classif')  # killed mid-write
    leak.PartialResults(path, settings).recorder("fast", "dual")("1/3", {"colour": False})
    done = leak.PartialResults(path, settings).done
    assert done == {("fast", "dual"): {"0/3": {"colour": True}, "1/3": {"colour": False}}}


def test_leakage_steering_script_refuses_unknown_presets_before_work(capsys):
    leak = _script_module("shapes_leakage_steering")
    with pytest.raises(SystemExit):
        leak.main(["--schedules", "fast,slowest"])
    assert "unknown schedule preset 'slowest'" in capsys.readouterr().err


def test_leakage_steering_table_pairs_images():
    leak = _script_module("shapes_leakage_steering")

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
    compare = _script_module("shapes_compare")
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
    compare = _script_module("shapes_compare")
    new = _bench_results({"0/100": True, "1/100": True})
    old = _bench_results({"0/100": True, "1/100": True})
    new["parts"][0]["modes"]["steered"]["objects_found_by_image"] = {"0/100": True, "1/100": True}
    assert [r["metric"] for r in compare.compare_results(new, old)] == ["strict", "colour"]  # old lacks it
    old["parts"][0]["modes"]["steered"]["objects_found_by_image"] = {"0/100": False, "1/100": True}
    found = compare.compare_results(new, old)[2]
    assert (found["metric"], found["a_correct"], found["b_correct"], found["a_only"]) == ("found", 2, 1, 1)


def test_compare_script_compares_copied_images_once():
    compare = _script_module("shapes_compare")
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


def test_shapes_targets_judge_a_bench_result(tmp_path):
    targets = _script_module("shapes_targets")
    modes = lambda base, steered: {  # noqa: E731
        "base": {"accuracy": base, "colour_accuracy": base},
        "steered": {"accuracy": steered, "colour_accuracy": steered}}
    results = {"parts": [{"key": "position", "modes": modes(0.25, 0.75)},
                         {"key": "multi_3_2", "modes": modes(0.1, 0.4)}]}
    summary = targets.target_summary(results)
    assert "colour: base 0.250 (target <= 0.35: met), steered 0.750 (target >= 0.75: met; >= 3x base: 3.00x, met)" \
        in summary
    assert "multi 3/2 steered: strict 0.400, colour 0.400 (target >= 0.5: missed)" in summary
    results["parts"][0]["modes"] = modes(0.0, 0.5)   # a base of 0 has no ratio; any steered is above 3x it
    assert "strict: base 0.000 (target <= 0.35: met), steered 0.500 (target >= 0.75: missed; >= 3x base: no " \
           "ratio to a base of 0, met)" in targets.target_summary(results)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    assert targets.main([str(path), "--out", str(tmp_path / "t.md")]) == 0
    assert "target >= 0.75: missed" in (tmp_path / "t.md").read_text()
    path.write_text(json.dumps({"parts": [{"key": "position", "modes": {"base": modes(0.2, 0.2)["base"]}}]}))
    assert targets.main([str(path), "--out", str(tmp_path / "none.md")]) == 0     # a base-only bench: no target
    assert "(no part of this bench has a target)" in (tmp_path / "none.md").read_text()


class _SureOfLeft(torch.nn.Module):
    """A stand-in classifier that always says "to the left of" (checks class lookup and summing)."""

    def __init__(self):
        super().__init__()
        from l2s.relations import PUBLISHED_CLASSES

        self.config = type("Config", (), {"class_names": PUBLISHED_CLASSES})()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps = []

    def step_index(self, step):
        return step

    def forward(self, maps, step_index):
        self.steps.append(step_index)
        logits = torch.full((maps.shape[0], 5), -20.0)
        logits[:, self.config.class_names.index("to the left of")] = 20.0
        return logits


def test_classifier_judge_inverts_each_image_and_sums_the_prompted_relations_log_probabilities():
    from dataclasses import replace

    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    pipe = build_shapes_pipeline(replace(TINY_CONFIG, image_size=16), seed=0)
    classifier = _SureOfLeft()
    judge = _script_module("classifier_judge").ClassifierJudge(pipe, classifier, steps=4, store_steps=(1, 3))
    images = torch.rand(3, 3, 16, 16)
    prompts = ["a red circle to the left of a blue square", "a red circle to the right of a blue square",
               "a red circle to the left of a blue square to the right of a green triangle"]
    scores = judge(images, prompts)
    assert scores[0] > -1e-6 and scores[1] == pytest.approx(-40.0, abs=1e-3)
    assert scores[2] == pytest.approx(-40.0, abs=1e-3)   # one pair of two is wrong
    assert sorted(set(classifier.steps)) == [1, 3]


def test_measurably_better_needs_the_first_setting_ahead_and_a_small_sign_test_p():
    from l2s.evaluation import PairedComparison

    better = _script_module("shapes_targets").measurably_better
    assert better(PairedComparison(100, 0, 0, 12, 1))          # p ~ 0.003
    assert not better(PairedComparison(100, 0, 0, 1, 12))      # the second is the better one
    assert not better(PairedComparison(100, 0, 0, 6, 2))       # p ~ 0.29: not measurable


@pytest.mark.parametrize("script, argv", [
    ("shapes_found_rate", ["--model", "{gone}", "--prompts-per-seed", "1", "--seeds", "1"]),
    ("shapes_step_size", ["--model", "{gone}", "--prompts", "1", "--seeds", "1"]),
    ("shapes_leakage_steering", ["--model", "{gone}", "--prompts", "1", "--seeds", "3"]),
    ("shapes_compare", ["{gone}", "{gone}"]),
    ("reward_hack_check", ["--base", "{gone}", "--tuned", "{gone}"]),
])
def test_research_scripts_refuse_a_missing_input_in_one_line(script, argv, tmp_path, capsys):
    gone = str(tmp_path / "gone")
    with pytest.raises(SystemExit) as exit_:
        _script_module(script).main([a.format(gone=gone) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and gone in err and len(err.strip().splitlines()) == 1, err
