"""The shapes bench: its parts, judging on colours, the results table, paired comparisons and header."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import l2s.shapes as shapes_world
from l2s.evaluation import PairedComparison


@pytest.fixture(scope="module")
def tiny_shapes_pipe():
    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    torch.manual_seed(0)
    return build_shapes_pipeline(TINY_CONFIG, seed=0)


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
    summary = shapes_world.comparison_summary(results)
    assert "target" not in summary and "met" not in summary    # measurements only; targets live in experiments/
    # Two images right with dual only, none with pos-only only: p = 0.5.
    assert ("dual vs pos-only classifier, colour, paired on 4 images: 0.750 vs 0.250; right with dual only 2, "
            "with pos-only only 0, sign test p = 0.5") in summary
    assert "steered vs base, two objects, strict, paired on 4 images: right only when steered 1, only in base 0" in summary
    results["classifier_comparison"] = {"split": "val", "by_prompt_type": {"neg": {
        "n_pairs": 200, "a_correct": 180, "b_correct": 160, "a_only": 25, "b_only": 5, "p_value": 0.0003}}}
    assert ("neg prompts, paired on 200 maps: 0.900 vs 0.800; right with dual only 25, with pos-only only 5, "
            "sign test p = 0.0003") in shapes_world.comparison_summary(results)
    def pairs(a, b, a_only, b_only):
        return PairedComparison(100, a, b, a_only, b_only).to_dict()

    results["classifier_comparison"]["leakage"] = {
        "dual": {"all": pairs(90, 89, 3, 2), "1": pairs(44, 44, 1, 1), "3": pairs(46, 45, 2, 1)},
        "pos_only": {"all": pairs(92, 70, 24, 2), "1": pairs(47, 30, 18, 1), "3": pairs(45, 40, 6, 1)}}
    summary = shapes_world.comparison_summary(results)
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
    assert results["parts"][0]["images"] == {"total": 4, "resumed": 0}
    again = shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=2.0, **kwargs)
    assert again["parts"][0]["images"] == {"total": 4, "resumed": 4}     # the CLI says so
    import json

    record = json.loads((tmp_path / "out/position/steered/00001/samples/0000.json").read_text())
    assert record["meta"]["batch"] == 2   # batches of up to 16 by default: both prompts in one call
    # every image's found verdict is recorded, and is the image re-judged (so bench runs pair on it)
    from PIL import Image

    from l2s.shapes import shapes_position_prompts
    from l2s.shapes import ShapesDetector
    from l2s.shapes.verdicts import extra_objects

    steered = results["parts"][0]["modes"]["steered"]
    specs = shapes_position_prompts(n=2, seed=0)
    for key, found in steered["objects_found_by_image"].items():
        index, seed = key.split("/")
        path = tmp_path / "out" / "position" / "steered" / f"{int(index):05d}" / "samples" / f"{int(seed):04d}.png"
        with Image.open(path) as image:
            assert found == shapes_world.all_objects_found(ShapesDetector(), image.convert("RGB"), specs[int(index)])
    assert steered["objects_found"] == sum(steered["objects_found_by_image"].values()) / 2
    for key, extra in steered["extra_objects_by_image"].items():
        index, seed = key.split("/")
        path = tmp_path / "out" / "position" / "steered" / f"{int(index):05d}" / "samples" / f"{int(seed):04d}.png"
        with Image.open(path) as image:
            assert extra == extra_objects(ShapesDetector(), image.convert("RGB"), specs[int(index)])
    assert steered["extra_objects"] == sum(steered["extra_objects_by_image"].values()) / 2
    markdown = shapes_world.write_bench_results(results, tmp_path / "bench.md").read_text()
    assert "true CFG 2 against the empty caption (base and steered alike)" in markdown
    with pytest.raises(L2SError, match="sampling"):   # images made with other guidance are not mixed in
        shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=1.0, **kwargs)
    assert results["settings"]["step_size"] == shapes_world.SHAPES_STEP_SIZE
    # nor images steered with another step size (in the bench's words: it has no --restart)
    with pytest.raises(L2SError, match=r"schedule.*; use another --out, or the same settings to resume it$"):
        shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=2.0, step_size=0.5, **kwargs)
    _tiny_shapes_classifier(tiny_shapes_pipe, seed=1).save(tmp_path / "clf")   # retrained at the same path
    with pytest.raises(L2SError, match="classifier_digest"):
        shapes_world.run_shapes_bench(tmp_path / "out", true_cfg_scale=2.0, **kwargs)
    gentle = shapes_world.run_shapes_bench(tmp_path / "gentle", true_cfg_scale=2.0, step_size=0.5,
                                           **{**kwargs, "parts": ["position", "ablation"]})
    assert gentle["settings"]["step_size"] == 0.5
    # The ablation steers only; it carries the two-object part's base and dual images, and says so.
    assert [(p["key"], p["copied_modes"]) for p in gentle["parts"]] == [
        ("position", []), ("ablation", ["base", "reference_dual"])]
    assert "steering step size 0.5" in shapes_world.write_bench_results(gentle, tmp_path / "g.md").read_text()


def test_bench_steers_with_the_execution_and_engine_asked_for_and_resumes_only_with_them(tiny_shapes_pipe, tmp_path,
                                                                                          monkeypatch):
    import l2s.shapes.bench as bench
    from l2s.errors import L2SError

    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    made = []

    def steerer(*args, **kwargs):
        made.append((kwargs["mode"], kwargs["engine"]))
        return shapes_world.steer_shapes_pipeline(*args, **kwargs)

    monkeypatch.setattr(bench, "steer_shapes_pipeline", steerer)
    kwargs = dict(pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf", ablation_classifier=tmp_path / "clf",
                  parts=["position"], position_prompts=1, seeds=(0,), progress=False)
    results = shapes_world.run_shapes_bench(tmp_path / "out", execution="reference", engine="eager", **kwargs)
    assert made == [("reference", "eager")]
    assert (results["settings"]["execution"], results["settings"]["engine"]) == ("reference", "eager")
    with pytest.raises(L2SError, match="execution"):   # images computed otherwise are not mixed in
        shapes_world.run_shapes_bench(tmp_path / "out", **kwargs)
    default = shapes_world.run_shapes_bench(tmp_path / "default", **kwargs)
    assert made[-1] == ("fast", "auto") and not {"execution", "engine"} & set(default["settings"])


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
    assert "LoRA" not in other
    settings["lora"] = "ss"
    tuned = shapes_world.write_bench_results({"parts": [part], "settings": settings}, tmp_path / "c.md").read_text()
    assert "LoRA adapter `ss` merged into the model" in tuned


def _tiny_shapes_classifier(pipe, seed=0):
    """A random relation classifier shaped for the shapes world's maps (8x8, its trained steps)."""
    from l2s.demo import tiny_classifier_for

    return tiny_classifier_for(pipe, seed=seed, orig_map_size=8, timesteps=shapes_world.SHAPES_STORE_STEPS,
                               num_timesteps=shapes_world.SHAPES_STEPS)


def test_bench_batch_size_is_checked_before_any_work(tmp_path):
    from l2s.errors import UsageError

    with pytest.raises(UsageError, match="batch_size must be a positive integer, got 0"):
        shapes_world.run_shapes_bench(tmp_path / "out", batch_size=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=0.0), "scale must be a positive number, got 0.0"),
    (dict(scale=float("nan")), "scale must be a positive number"),
    (dict(position_prompts=0), "position_prompts must be a positive integer, got 0"),
    (dict(seeds=()), "no image seeds given"),
    (dict(execution="fast+cudagraphs"), "unknown execution mode 'fast\\+cudagraphs' for the shapes model"),
    (dict(engine="cuda-graph"), "engine cuda-graph: the cuda-graph engine needs the model on CUDA"),
    (dict(execution="reference", engine="compile"), "engine 'compile' needs one of the fast modes"),
])
def test_bench_counts_and_speed_are_checked_before_any_work(kwargs, message, tmp_path):
    from l2s.errors import UsageError

    with pytest.raises(UsageError, match=message):
        shapes_world.run_shapes_bench(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(ablation_classifier="shapes-typo"), r"classifier not found: shapes-typo \(did you mean 'shapes'\?\)"),
    (dict(classifier="/nonexistent"), "^classifier not found: /nonexistent$"),
    (dict(ablation_classifier="/nonexistent"), "^classifier not found: /nonexistent$"),
    (dict(lora="shapes-grp"), r"LoRA adapter not found: shapes-grp \(did you mean 'shapes-grpo'\?\)"),
    (dict(lora="/nonexistent"), "no LoRA adapter at /nonexistent"),
    (dict(reward_model="spatialscor"), r"reward model not found: spatialscor \(did you mean 'spatialscore'\?\)"),
    (dict(reward_model="/nonexistent"), "no reward model at /nonexistent"),
])
def test_bench_weights_named_are_checked_before_the_model_loads(kwargs, message, tmp_path, monkeypatch):
    import l2s.shapes.bench
    from l2s.errors import ModelLoadError

    monkeypatch.setattr(l2s.shapes.bench, "load_shapes_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ModelLoadError, match=message):
        shapes_world.run_shapes_bench(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bench_cli_names_the_option_and_lists_every_part(tmp_path, capsys):
    from l2s.cli import main
    from l2s.cli.shapes_bench import build_bench_parser
    from l2s.shapes import bench_plain

    for option, value in (("--scale", "0"), ("--position-prompts", "0"), ("--step-size", "0"), ("--true-cfg", "-1")):
        assert main(["shapes", "bench", option, value, "--out", str(tmp_path / "o")]) == 2
        assert f"l2s: error: {option} must be a positive" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    in_a_file = f"cannot make its folder ({tmp_path / 'a-file'} is a file, not a folder)"
    refused = [(tmp_path, "is a folder; give a file path"), (tmp_path / "a-file" / "table.md", in_a_file),
               (tmp_path / "a-file" / "sub" / "table.md", in_a_file),
               (tmp_path / "table.json", "give a Markdown file's path (ending in .md)"),
               (tmp_path / "table.txt", "give a Markdown file's path (ending in .md)")]
    if Path("/proc/self").is_dir():    # a folder that takes no new files, even from root
        refused.append((Path("/proc/l2s-table.md"), "cannot write in its folder"))
    for results, message in refused:
        assert main(["shapes", "bench", "--results", str(results), "--out", str(tmp_path / "o")]) == 2
        assert f"l2s: error: --results {results}: {message}" in capsys.readouterr().err
    assert main(["shapes", "bench", "--parts", " ,", "--out", str(tmp_path / "o")]) == 2
    assert "l2s: error: --parts: no part given" in capsys.readouterr().err
    assert main(["shapes", "bench", "--classifier-data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert f"l2s: error: --classifier-data: {tmp_path / 'none'} is not an l2s map dataset (no such folder" in \
        capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    help_text = " ".join(build_bench_parser().format_help().split())
    for key in [p.key for p in shapes_world.bench_parts()] + [bench_plain.KEY]:
        assert key in help_text, key


def test_bench_cli_refuses_a_part_given_twice(tmp_path, capsys, monkeypatch):
    import l2s.shapes.bench as bench_module
    from l2s.cli import main

    monkeypatch.setattr(bench_module, "_run_bench", lambda *a, **k: pytest.fail("ran the bench"))
    assert main(["shapes", "bench", "--parts", "position,ood, position", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "l2s: error: --parts: the part position is given twice (each part runs once)\n"


def test_bench_modes_are_checked_before_any_work(tmp_path, monkeypatch):
    import l2s.shapes.bench as bench_module
    from l2s.errors import UsageError

    monkeypatch.setattr(bench_module, "_run_bench", lambda *a, **k: pytest.fail("ran the bench"))

    with pytest.raises(UsageError, match=r"unknown bench mode steerd \(--modes takes base,steered or one of them\)$"):
        shapes_world.run_shapes_bench(tmp_path / "out", modes=["steerd"])
    with pytest.raises(UsageError, match="bench part ablation generates only steered images, not base"):
        shapes_world.run_shapes_bench(tmp_path / "out", modes=["base"], parts=["position", "ablation"])
    with pytest.raises(UsageError, match="no bench mode given"):
        shapes_world.run_shapes_bench(tmp_path / "out", modes=[])
    with pytest.raises(UsageError, match=r"^--modes: the mode base is given twice \(each mode runs once\)$"):
        shapes_world.run_shapes_bench(tmp_path / "out", modes=["base", "steered", "base"])
    assert not (tmp_path / "out").exists()


def test_a_base_only_bench_generates_no_steered_image(tiny_shapes_pipe, tmp_path):
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    results = shapes_world.run_shapes_bench(
        tmp_path / "out", pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf",
        ablation_classifier=tmp_path / "clf", parts=["position", "multi_3_2"], position_prompts=2, seeds=(0,),
        scale=0.01, progress=False, modes=["base"])
    assert [(p["key"], sorted(p["modes"])) for p in results["parts"]] == [("position", ["base"]), ("multi_3_2", ["base"])]
    assert results["settings"]["modes"] == ["base"]
    assert not (tmp_path / "out/position/steered").exists() and (tmp_path / "out/position/base").is_dir()
    markdown = shapes_world.write_bench_results(results, tmp_path / "bench.md").read_text()
    assert "steered" not in markdown.split("## Paired comparisons")[1]   # nothing to pair without steered images
    assert "(0/0)" not in markdown   # a mode not generated reads '-', not an empty 0.000


def test_a_steered_only_bench_copies_two_object_images_only_into_parts_of_the_same_prompts(tiny_shapes_pipe,
                                                                                           tmp_path):
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    results = shapes_world.run_shapes_bench(
        tmp_path / "out", pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf",
        ablation_classifier=tmp_path / "clf", parts=["position", "multi_3_2", "ablation"], position_prompts=2,
        seeds=(0,), scale=0.01, progress=False, modes=["steered"])
    copied = {p["key"]: (p["copied_modes"], sorted(p["modes"])) for p in results["parts"]}
    assert copied == {"position": ([], ["steered"]), "multi_3_2": ([], ["steered"]),   # other prompts: nothing
                      "ablation": (["reference_dual"], ["reference_dual", "steered"])}
    markdown = shapes_world.write_bench_results(results, tmp_path / "bench.md").read_text()
    assert "nan" not in markdown and "objects found with their shapes" not in markdown   # no base images


def test_the_shipped_adapter_has_a_name():
    from pathlib import Path

    from l2s.shapes.recipes import SHIPPED_LORA, lora_folder, shipped_assets

    assert lora_folder(SHIPPED_LORA) == shipped_assets().grpo_adapter
    assert lora_folder("runs/grpo-ss") == Path("runs/grpo-ss") and lora_folder(None) is None


def test_bench_results_never_replace_another_commands_files(tmp_path, capsys):
    from l2s.cli import main

    run = tmp_path / "grpo"
    run.mkdir()
    (run / ".l2s.kind").write_text("grpo\n")
    (tmp_path / "grpo.json").write_text('{"epochs_done": 3}')
    (tmp_path / "notes.md").write_text("# notes\n")
    refused = [(tmp_path / "grpo.md", f"{tmp_path / 'grpo.json'} beside it exists and is not this command's"),
               (tmp_path / "notes.md", "exists and is not a report of this command"),
               (run / "t.md", "an l2s run folder that its command owns"),
               (tmp_path / "o" / "t.md", f"inside {(tmp_path / 'o').resolve()}, an l2s run folder")]
    for results, message in refused:
        assert main(["shapes", "bench", "--results", str(results), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "grpo.json").read_text() == '{"epochs_done": 3}' and not (tmp_path / "o").exists()
    from l2s.cli.checks import check_report_file
    from l2s.shapes.bench_report import BENCH_TITLE, is_bench_results

    written = shapes_world.write_bench_results({"parts": [], "settings": {"seeds": [1]}}, tmp_path / "old.md")
    check_report_file(written, "--results", BENCH_TITLE, beside=(".json", is_bench_results))   # its own: replaced


def test_bench_results_are_written_though_the_reader_of_the_table_is_gone(tmp_path, monkeypatch):
    import l2s.shapes
    from l2s.cli import main
    from l2s.shapes.bench_report import BENCH_TITLE, is_bench_results

    from .test_compare import ClosedPipe

    monkeypatch.setattr(l2s.shapes, "run_shapes_bench", lambda *a, **k: {"parts": [], "settings": {"seeds": [1]}})
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    results = tmp_path / "r.md"
    assert main(["shapes", "bench", "--results", str(results), "--out", str(tmp_path / "o")]) == 1
    assert results.read_text().startswith(BENCH_TITLE) and is_bench_results(results.with_suffix(".json"))
