"""``l2s eval``: the shapes world's prompt sets, scoring a GenEval folder, runs on the tiny model, errors."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from l2s.cli import main
from l2s.cli.evaluate import prompt_sets
from l2s.evaluation import PromptSpec, RelationCheck, resolve_prompt_set, spec_from_metadata
from l2s.pipelines import SteeringPipeline
from l2s.shapes import render, scene_for_relation
from tests.hub_cache import cached_tiny_flux


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("l2s: error:")]


def test_eval_names_the_shapes_worlds_prompt_sets():
    specs, _ = resolve_prompt_set("shapes:3,2", 4, sets=prompt_sets())
    assert all(s.tag == "3obj_2rel" for s in specs)
    assert len(resolve_prompt_set("shapes", sets=prompt_sets())[0]) == 100


# ---------------------------------------------------------------------------------------------
# --images: a hand-made GenEval folder
# ---------------------------------------------------------------------------------------------

def _sample(folder, name, subject, relation, obj, seed):
    scene = scene_for_relation(np.random.default_rng(seed), subject, relation, obj, size=48)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    render(scene).save(folder / "samples" / name)


def test_score_geneval_folder_and_resume(tmp_path, capsys, caplog):
    images = tmp_path / "geneval"
    red_circle, blue_square = ("circle", "red"), ("square", "blue")
    first = images / "00000"
    first.mkdir(parents=True)
    (first / "metadata.jsonl").write_text(json.dumps(
        {"tag": "position", "include": [{"class": "blue square", "count": 1},
                                        {"class": "red circle", "count": 1, "position": ["left of", 0]}],
         "prompt": "a photo of a red circle left of a blue square"}) + "\n")
    _sample(first, "0000.png", red_circle, "left of", blue_square, 0)
    _sample(first, "0001.png", red_circle, "right of", blue_square, 1)   # wrong side
    _sample(first, "extra.png", red_circle, "right of", blue_square, 2)  # not \d+.png: ignored
    second = images / "00001"
    second.mkdir()
    (second / "metadata.jsonl").write_text(json.dumps(PromptSpec(
        "a green triangle above a yellow diamond",
        (RelationCheck("green triangle", "above", "yellow diamond"),)).to_dict()) + "\n")
    _sample(second, "0000.png", ("triangle", "green"), "above", ("diamond", "yellow"), 3)
    _sample(second, "0003.png", ("triangle", "green"), "above", ("diamond", "yellow"), 4)
    counting = images / "00002"
    counting.mkdir()
    (counting / "metadata.jsonl").write_text('{"tag": "counting", "include": [{"class": "red circle", '
                                             '"count": 2}], "prompt": "two red circles"}\n')
    _sample(counting, "0000.png", red_circle, "left of", blue_square, 5)
    jpeg_only = images / "00003"                                            # GenEval scores PNGs only
    shutil.copytree(first, jpeg_only)
    for png in (jpeg_only / "samples").glob("*.png"):
        Image.open(png).save(png.with_suffix(".jpg"))
        png.unlink()

    out = tmp_path / "scores"
    code, stdout, err = run(["eval", "--images", str(images), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records if "samples/<n>.png" in r.getMessage()] == [
        "warning: 1 position-prompt folder has no samples/<n>.png and is not scored (listed in summary.json): 00003"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["folders_without_images"] == ["00003"]
    scored = summary["modes"]["images"]
    assert (scored["n_correct"], scored["n_images"], scored["accuracy"]) == (3, 4, 0.75)
    assert scored["per_relation"]["left of"] == {"holds": 1, "total": 2, "accuracy": 0.5}
    assert summary["settings"]["folders_without_position"] == 1
    assert "3/4 0.750" in stdout
    wrong = json.loads((out / "images/00000/samples/0001.json").read_text())
    assert wrong["correct"] is False and "right of" in wrong["reason"]
    assert (out / "contact_sheet_01.png").is_file()

    code, _, err = run(["eval", "--images", str(images), "--out", str(out), "--quiet"], capsys)
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["modes"]["images"]["status_counts"] == {"resumed": 4}
    assert (f"l2s: all 4 images were already scored in {out} (same images and settings): the table is theirs; "
            "--restart starts the run over") in err.splitlines()

    code, _, err = run(["eval", "--images", str(images), "--out", str(out), "--quiet", "--rule", "t2i_compbench"],
                       capsys)
    again = json.loads((out / "summary.json").read_text())["modes"]["images"]
    assert code == 0 and again["status_counts"] == {"rescored": 4} and again["n_correct"] == 3
    assert (f"l2s: rescored 4 images in {out} whose earlier scores used another rule or detector (those scores are "
            "replaced)") in err.splitlines()


@pytest.mark.parametrize("folder, message", [
    ("flat", "it holds 1 loose image and no prompts"),
    ("next to", "GenEval's rule has no verdict for 'next to'"),
    ("missing", "no such folder"),
])
def test_a_wrong_image_folder_is_refused_before_the_detector_loads(folder, message, tmp_path, capsys, monkeypatch):
    import l2s.evaluation

    monkeypatch.setattr(l2s.evaluation, "load_detector", lambda *a, **k: pytest.fail("loaded the detector"))
    images = tmp_path / "images"
    if folder == "flat":
        images.mkdir()
        Image.new("RGB", (8, 8)).save(images / "dog_left_of_cat.png")
    elif folder == "next to":
        (images / "00000").mkdir(parents=True)
        (images / "00000" / "metadata.jsonl").write_text(json.dumps(PromptSpec(
            "a red circle next to a blue square", (RelationCheck("red circle", "next to", "blue square"),)).to_dict()))
        _sample(images / "00000", "0000.png", ("circle", "red"), "right of", ("square", "blue"), 0)
    code, _, err = run(["eval", "--images", str(images), "--detector", str(tmp_path / "owl"), "--out",
                        str(tmp_path / "o"), "--quiet"], capsys)
    (line,) = error_lines(err)
    assert code == 2 and message in line, line


# ---------------------------------------------------------------------------------------------
# The command on the tiny model
# ---------------------------------------------------------------------------------------------

TINY_RUN = ["eval", "--model", "tiny", "--prompts", "shapes", "--n-prompts", "2", "--seeds", "0", "--steps", "2",
            "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    code = main(TINY_RUN + ["--out", str(out)])
    assert code == 0
    return out


def test_eval_tiny_writes_the_run(tiny_run):
    prompts = [json.loads(line) for line in (tiny_run / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 2
    records = [json.loads(line) for line in (tiny_run / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for mode in ("base", "steered"):
        for index, prompt in enumerate(prompts):
            folder = tiny_run / mode / f"{index:05d}"
            assert (folder / "samples" / "0000.png").is_file()
            assert spec_from_metadata(json.loads((folder / "metadata.jsonl").read_text())).prompt == prompt["prompt"]
            record = json.loads((folder / "samples" / "0000.json").read_text())
            assert record["prompt"] == prompt["prompt"] and record["meta"]["seed"] == 0
            # schnell's reference schedule: 16 refinement iterations at step 0 when steered.
            assert record["meta"]["iterations"] == (16 if mode == "steered" else 0)
            assert record["meta"]["steered"] is (mode == "steered")
            assert record["meta"]["generate_s"] > 0
            assert record["meta"]["batch"] == 2  # --batch-size 4 by default: both prompts in one call
    summary = json.loads((tiny_run / "summary.json").read_text())
    for mode in ("base", "steered"):
        mine = [r for r in records if r["meta"]["mode"] == mode]
        assert summary["modes"][mode]["n_images"] == 2
        assert summary["modes"][mode]["n_correct"] == sum(r["correct"] for r in mine)
    assert summary["settings"]["steps"] == 2 and summary["settings"]["detector"] == "shapes"
    assert (tiny_run / "contact_sheet_01.png").is_file()


def test_eval_records_what_its_images_were_made_with_beside_what_was_asked(tiny_run, tmp_path, capsys):
    from tests.evaluation.test_html_report import Page

    recorded = json.loads((tiny_run / "run.json").read_text())
    asked = recorded["generation"]     # as a resumed run compares it: None is the model's default
    assert asked["steps"] == 2 and asked["height"] is None and asked["guidance"] is None
    used = recorded["resolved"]
    assert used["sampling"] == {"num_inference_steps": 2, "height": 32, "width": 32, "guidance_scale": None,
                                "true_cfg_scale": 1.0}       # tiny schnell-like FLUX: no guidance read
    assert Image.open(tiny_run / "steered" / "00000" / "samples" / "0000.png").size == (32, 32)
    assert used["schedule"]["name"] == "reference" and used["schedule"]["iterations"] == [16, 0]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["resolved"] == used and summary["settings"]["height"] is None
    page = Page()
    page.feed((tiny_run / "report.html").read_text(encoding="utf-8"))
    assert dict(page.tables["used"][1:]) == {
        "steps": "2", "height": "32 (model default)", "width": "32 (model default)",
        "guidance": "none (not read by this model)", "true CFG": "1.0",
        "schedule": "reference: steps 0 of 2 steered, 16 iterations each", "step size": "5.0 (schedule default)"}
    out = tmp_path / "run"                     # a run recorded before: it resumes, and gains the record
    shutil.copytree(tiny_run, out)
    del recorded["resolved"]
    (out / "run.json").write_text(json.dumps(recorded))
    code, _, err = run(TINY_RUN + ["--out", str(out)], capsys)
    assert code == 0 and "already scored" in err, err
    assert json.loads((out / "run.json").read_text()) == {**recorded, "resolved": used}


def test_eval_resumes_and_refuses_other_settings(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "base" / "00001" / "samples" / "0000.json").unlink()
    calls = []
    original = SteeringPipeline.__call__

    def counting(self, prompt, **kwargs):
        calls.append((prompt, kwargs["seed"], kwargs["steer"]))
        return original(self, prompt, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", counting)
    code, stdout, err = run(TINY_RUN + ["--out", str(out)], capsys)
    assert code == 0, err
    # the untimed warm-up image, then the one missing image: the same prompt and seed, unsteered
    assert len(calls) == 2 and calls[0] == calls[1] and calls[1][1:] == (0, False)
    assert "base" in stdout and "steered" in stdout and "relation" in stdout and "s/image" in stdout
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert counts["base"]["status_counts"] == {"resumed": 1, "generated": 1}
    assert counts["steered"]["status_counts"] == {"resumed": 2}

    import l2s.cli.evaluate as cli_evaluate

    with monkeypatch.context() as patched:   # what the command line says is refused before any load
        patched.setattr(cli_evaluate, "load_steerer", lambda *a: pytest.fail("loaded the model"))
        code, _, err = run(TINY_RUN[:-2] + ["3", "--quiet", "--out", str(out)], capsys)
    assert code == 2 and len(calls) == 2   # refused: nothing generated
    (line,) = error_lines(err)
    assert "steps: 2 -> 3" in line and line.endswith("or --restart to start it over"), line
    # images steered with another step size are not mixed in either
    code, _, err = run(TINY_RUN + ["--step-size", "1", "--out", str(out)], capsys)
    assert code == 2 and len(calls) == 2   # refused: nothing generated
    (line,) = error_lines(err)
    assert "step_size: unset -> 1.0" in line   # None: the default was taken
    # nor images of another schedule, capture backend or plain-step engine (they change pixels)
    for option, value, change in [("--schedule", "fast", "schedule: 'reference' -> 'fast'"),
                                  ("--capture-backend", "native", "capture_backend: 'sdpa' -> 'native'"),
                                  ("--engine", "compile", "engine: 'auto' -> 'compile'")]:
        code, _, err = run(TINY_RUN + [option, value, "--out", str(out)], capsys)
        assert code == 2 and len(calls) == 2   # refused: nothing generated
        (line,) = error_lines(err)
        assert change in line and line.endswith("or --restart to start it over"), line
    run_file = out / "run.json"
    recorded = json.loads(run_file.read_text())
    del recorded["generation"]["step_size"]          # as written before the setting existed
    run_file.write_text(json.dumps(recorded))
    code, _, err = run(TINY_RUN + ["--out", str(out)], capsys)
    assert code == 2 and "step_size: (absent) -> unset" in error_lines(err)[0]



def test_a_reference_eval_records_no_capture_backend_and_older_records_still_resume(tmp_path, capsys):
    out = tmp_path / "ref"
    argv = TINY_RUN[:6] + ["1"] + TINY_RUN[7:] + ["--mode", "steered", "--execution", "reference", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    run_file = out / "run.json"
    recorded = json.loads(run_file.read_text())
    assert recorded["generation"]["capture_backend"] is None     # its own explicit attention ran, not sdpa
    assert json.loads((out / "summary.json").read_text())["settings"]["capture_backend"] is None
    recorded["generation"]["capture_backend"] = "sdpa"           # as written before
    run_file.write_text(json.dumps(recorded))
    code, _, err = run(argv, capsys)
    assert code == 0 and "already scored" in err, err
    assert json.loads(run_file.read_text())["generation"]["capture_backend"] == "sdpa"   # kept as it was


def test_eval_records_the_dtype_resolved_and_older_unresolved_records_still_resume(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    run_file = out / "run.json"
    assert json.loads(run_file.read_text())["generation"]["dtype"] == "fp32"   # what loaded, not auto or null
    code, _, err = run(TINY_RUN + ["--dtype", "fp32", "--out", str(out)], capsys)
    assert code == 0 and "already scored" in err, err
    for before in (None, "auto"):              # the tiny model's as recorded before, and a --model PATH's
        recorded = json.loads(run_file.read_text())
        recorded["generation"]["dtype"] = before
        run_file.write_text(json.dumps(recorded))
        code, _, err = run(TINY_RUN + ["--out", str(out)], capsys)
        assert code == 0 and "already scored" in err, (before, err)


def test_eval_resumes_a_run_that_recorded_its_lora_folder_as_typed(tmp_path, capsys, monkeypatch):
    from l2s.shapes.recipes import lora_folder

    shutil.copytree(lora_folder("shapes-grpo"), tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--n-prompts", "1", "--seeds", "0", "--mode", "steered", "--steps", "2", "--no-contact-sheet",
            "--quiet", "--lora", "adapter", "--out", "run"]
    assert run(argv, capsys)[0] == 0
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["generation"]["lora"] == str(tmp_path / "adapter")
    recorded["generation"]["lora"] = "adapter"       # as an earlier version recorded it: as typed
    (tmp_path / "run" / "run.json").write_text(json.dumps(recorded))
    code, _, err = run(argv, capsys)
    assert code == 0 and "already scored" in err, err


def test_eval_takes_a_hub_id_and_its_snapshot_folder_for_one_model(hub_cache, tmp_path, capsys):
    snapshot_dir = cached_tiny_flux(hub_cache, tmp_path / "classifier")
    out = tmp_path / "run"
    argv = ["eval", "--prompts", "shapes", "--n-prompts", "1", "--seeds", "0", "--steps", "1", "--mode", "base",
            "--quiet", "--classifier", str(tmp_path / "classifier"), "--out", str(out), "--model"]
    code, _, err = run(argv + ["someone/tiny-flux"], capsys)
    assert code == 0, err
    snapshot = str(snapshot_dir.resolve())
    assert json.loads((out / "run.json").read_text())["generation"]["model"] == snapshot   # what loaded
    code, _, err = run(argv + [snapshot], capsys)
    assert code == 0 and "already scored" in err, err
    recorded = json.loads((out / "run.json").read_text())     # as typed, before hub ids were resolved
    recorded["generation"]["model"] = "someone/tiny-flux"
    (out / "run.json").write_text(json.dumps(recorded))
    code, _, err = run(argv + [snapshot], capsys)
    assert code == 0 and "already scored" in err, err


def test_eval_grows_its_prompt_set_and_keeps_the_images_it_has(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    grown = [*TINY_RUN[:6], "3", *TINY_RUN[7:], "--out", str(out)]
    assert grown[5:7] == ["--n-prompts", "3"]
    code, _, err = run(grown, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())["modes"]
    assert summary["base"]["status_counts"] == {"resumed": 2, "generated": 1}
    assert json.loads((out / "run.json").read_text())["generation"]["n_prompts"] == 3
    code, _, err = run([*TINY_RUN[:6], "2", *TINY_RUN[7:], "--out", str(out)], capsys)   # fewer: refused
    assert code == 2 and "n_prompts: 3 -> 2" in error_lines(err)[0]


def test_eval_refuses_a_request_for_fewer_seeds_or_modes_and_keeps_its_summary(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = (out / "summary.json").read_text()
    seeds = TINY_RUN.index("--seeds") + 1
    for changed, fix in (([*TINY_RUN[:seeds], "1", *TINY_RUN[seeds + 1:]], "--seeds 0-1"),
                         ([*TINY_RUN, "--mode", "steered"], "--mode both")):
        code, _, err = run(changed + ["--out", str(out)], capsys)
        (line,) = error_lines(err)
        assert code == 2 and "holds images of seed 0 in modes base and steered" in line, line
        assert f"rerun with {fix} (more seeds" in line, line
    assert (out / "summary.json").read_text() == before
    code, _, err = run(TINY_RUN + ["--out", str(out)], capsys)      # all of them: resumed as before
    assert code == 0, err
    for record in out.glob("*/*/samples/0000.json"):                # an earlier run's images are what counts:
        record.unlink()                                              # a folder without them takes any seeds
    code, _, err = run([*TINY_RUN[:seeds], "1", *TINY_RUN[seeds + 1:], "--mode", "steered", "--out", str(out)],
                       capsys)
    assert code == 0, err


def test_eval_refuses_to_resume_with_a_classifier_retrained_at_the_same_path(tmp_path, capsys, monkeypatch):
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

    folder, out = tmp_path / "classifier", tmp_path / "run"
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0).save(folder)
    argv = TINY_RUN + ["--mode", "steered", "--classifier", str(folder), "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    assert run(argv, capsys)[0] == 0                                       # the same weights resume
    monkeypatch.chdir(tmp_path)
    for spelled in ("classifier", "./classifier/"):                        # the same folder, spelled otherwise
        code, _, err = run(TINY_RUN + ["--mode", "steered", "--classifier", spelled, "--out", "run"], capsys)
        assert code == 0, err
    recorded = json.loads((out / "run.json").read_text())
    recorded["generation"]["classifier"] = "./classifier"                  # as runs recorded it before
    (out / "run.json").write_text(json.dumps(recorded))
    assert run(argv, capsys)[0] == 0
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=1).save(folder)   # retrained into the same folder
    code, _, err = run(argv, capsys)
    assert code == 2 and "classifier_digest: " in error_lines(err)[0]

def test_the_shipped_classifier_named_is_the_default_one(tmp_path, capsys):
    argv = ["eval", "--n-prompts", "1", "--seeds", "0", "--mode", "base", "--quiet", "--out", str(tmp_path / "run")]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv + ["--classifier", "shapes"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["modes"]["base"]["status_counts"] == {
        "resumed": 1}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--prompts", "nosuch"], "--prompts"),
    (["--prompts", "multi:3"], "multi:N_OBJ,N_REL"),
    (["--prompts", "multi:9,9"], "no prompt pattern"),
    (["--prompts", "shapes:3,2,1"], "--prompts"),
    (["--seeds", "0,x"], "--seeds"),
    (["--n-prompts", "0"], "--n-prompts"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--prompts", "geneval"], "--detector PATH"),
    (["--detector", "/nonexistent/owl"], "no detector checkpoint"),
    (["--detector", "/nonexistent/owl", "--detector-threshold", "0.5"], "no detector checkpoint"),
    (["--detector-threshold", "0.5"], "--detector-threshold applies to a detector directory; the shapes detector"),
    (["--images", ".", "--detector-threshold", "0.1"], "--detector-threshold applies to a detector directory"),
    (["--images", "/nonexistent/dir"], "--images /nonexistent/dir: no such folder"),
    (["--images", __file__], "is a file, not a folder of GenEval image folders"),
    (["--images", ".", "--seeds", "0-1", "--schedule", "fast"], "--images only scores the images in that folder: "
                                                               "--seeds, --schedule would make images"),
    (["--images", ".", "--relations", "a,left of,b"], "--relations would make images"),
])
def test_bad_eval_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(SteeringPipeline, "__call__", lambda *a, **k: pytest.fail("must not generate"))
    code, _, err = run(["eval", "--out", str(tmp_path / "o"), "--quiet"] + argv, capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert message in line, line
    assert not (tmp_path / "o" / "base").exists()


def test_model_folder_naming_a_missing_l2s_module_is_refused(tmp_path, capsys):
    from l2s.classifier import RelationClassifier
    from l2s.demo import tiny_classifier_config

    RelationClassifier(tiny_classifier_config(channels=4)).save(tmp_path / "clf")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "vae": ["l2s.no_such_module", "PixelShuffleVAE"]}))
    code, _, err = run(["eval", "--model", str(model), "--classifier", str(tmp_path / "clf"), "--n-prompts", "1",
                        "--seeds", "0", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "l2s.no_such_module" in line


def test_batch_size_option_reaches_run_eval_and_shapes_bench(tmp_path, capsys, monkeypatch):
    import l2s.evaluation
    import l2s.shapes

    class Reached(Exception):
        pass

    seen = []

    def capture(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        raise Reached

    monkeypatch.setattr(l2s.evaluation, "run_eval", capture)
    monkeypatch.setattr(l2s.shapes, "run_shapes_bench", capture)
    for argv in (["eval", "--model", "tiny", "--n-prompts", "1", "--quiet", "--out", str(tmp_path / "e")],
                 ["shapes", "bench", "--out", str(tmp_path / "b")]):
        for extra in ([], ["--batch-size", "3"]):
            with pytest.raises(Reached):
                main(argv + extra)
    assert seen == [4, 3, 16, 3]
    code, _, err = run(["shapes", "bench", "--batch-size", "-2", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and error_lines(err) == ["l2s: error: --batch-size must be a positive integer, got -2"]
    assert "more memory" in main_help(["eval", "--help"], capsys) and "more memory" in main_help(
        ["shapes", "bench", "--help"], capsys)


def main_help(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    return " ".join(capsys.readouterr().out.split())


def test_eval_records_and_repeats_what_made_steering_doubtful(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(TINY_RUN + ["--height", "48", "--out", str(out)], capsys)
    assert code == 0, err
    modes = json.loads((out / "summary.json").read_text())["modes"]
    assert modes["base"]["warnings"] == [] and len(modes["steered"]["warnings"]) == 1
    assert "maps are resampled" in modes["steered"]["warnings"][0]
    assert f"l2s: warning: steered images: {modes['steered']['warnings'][0]}" in err.splitlines()
    assert "<h2>Warnings</h2>" in (out / "report.html").read_text() and "maps are resampled" in \
        (out / "report.html").read_text()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(bool(r["meta"]["warnings"]) == (r["meta"]["mode"] == "steered") for r in records)
    code, _, err = run(TINY_RUN + ["--height", "48", "--out", str(out)], capsys)     # resumed: said again
    assert code == 0 and "l2s: warning: steered images: " in err


def test_a_classifier_of_another_model_is_refused_naming_the_model_it_was_trained_for(tmp_path, capsys):
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

    weights, data = tmp_path / "run" / "best", tmp_path / "maps"
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0).save(weights)
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"settings": {"model": "tiny"}}))
    (weights / "training.json").write_text(json.dumps({"dataset": str(data)}))
    argv = ["eval", "--n-prompts", "1", "--seeds", "0", "--quiet", "--classifier", str(weights), "--out",
            str(tmp_path / "e")]
    code, _, err = run(argv, capsys)          # the default model is the shipped shapes one
    (line,) = error_lines(err)
    assert code == 2 and line.endswith(f"{weights} was trained on maps of the model 'tiny': pass --model tiny"), line
    (weights / "training.json").write_text(json.dumps({"dataset": "/moved/away", "model": "tiny"}))
    code, _, err = run(argv, capsys)          # recorded beside the weights: the dataset may be gone
    assert code == 2 and error_lines(err)[0].endswith("pass --model tiny")
    code, _, err = run(["eval", "--model", "tiny", "--classifier", "shapes-k4", "--n-prompts", "1", "--seeds", "0",
                        "--quiet", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and error_lines(err)[0].endswith("is a shipped classifier of the shipped shapes model: "
                                                      "leave out --model")
    (weights / "training.json").unlink()      # nothing says: no --model ran the shipped one, which may be the slip
    code, _, err = run(argv, capsys)
    assert code == 2 and error_lines(err)[0].endswith("use a classifier trained for this model; without --model the "
                                                      "shipped shapes-world model ran: pass --model PATH, the model "
                                                      "this classifier was trained for")
    wider = tmp_path / "wider"                # with --model given: the plain refusal
    tiny_classifier_for(tiny_flux_pipeline(num_layers=2, num_single_layers=2, seed=0), seed=0).save(wider)
    code, _, err = run(["eval", "--model", "tiny", "--classifier", str(wider), *argv[1:5], "--out",
                        str(tmp_path / "e")], capsys)
    assert code == 2 and error_lines(err)[0].endswith("use a classifier trained for this model")


def test_eval_refuses_fewer_prompts_of_a_file_and_a_scoring_runs_folder(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle to the left of a blue square\na green square above a red circle\n")
    argv = ["eval", "--model", "tiny", "--steps", "2", "--prompts", str(prompts), "--seeds", "0", "--quiet"]
    assert run(argv + ["--out", str(tmp_path / "f")], capsys)[0] == 0
    prompts.write_text("a red circle to the left of a blue square\n")          # the last prompt removed
    code, _, err = run(argv + ["--out", str(tmp_path / "f")], capsys)
    (line,) = error_lines(err)
    assert code == 2 and "holds images of 2 prompts; this request has 1" in line, line
    assert run(["eval", "--images", str(tmp_path / "f" / "steered"), "--out", str(tmp_path / "s"), "--quiet"],
               capsys)[0] == 0
    summary = (tmp_path / "s" / "summary.json").read_text()
    code, _, err = run(argv + ["--out", str(tmp_path / "s")], capsys)
    (line,) = error_lines(err)
    assert code == 2 and "holds a scoring run of 'l2s eval --images'" in line, line
    assert (tmp_path / "s" / "summary.json").read_text() == summary


def test_scoring_another_image_folder_into_a_scoring_runs_folder_is_refused(tmp_path, capsys):
    argv = ["eval", "--model", "tiny", "--steps", "2", "--n-prompts", "2", "--seeds", "0", "--quiet"]
    assert run(argv + ["--out", str(tmp_path / "a")], capsys)[0] == 0
    score = ["eval", "--quiet", "--out", str(tmp_path / "s"), "--images"]
    assert run(score + [str(tmp_path / "a" / "steered")], capsys)[0] == 0
    summary = (tmp_path / "s" / "summary.json").read_text()
    code, _, err = run(score + [str(tmp_path / "a" / "base")], capsys)
    (line,) = error_lines(err)
    assert code == 2 and f"holds the scores of {(tmp_path / 'a' / 'steered').resolve()}" in line, line
    assert (tmp_path / "s" / "summary.json").read_text() == summary
    assert run(score + [str(tmp_path / "a" / "steered")], capsys)[0] == 0           # the same folder resumes
    assert run(score + [str(tmp_path / "a" / "base"), "--restart"], capsys)[0] == 0  # anew, when asked



def test_the_wrote_line_names_the_runs_files_not_a_users_file_beside_them(tmp_path, capsys):
    images = tmp_path / "geneval" / "00000"
    images.mkdir(parents=True)
    (images / "metadata.jsonl").write_text(json.dumps(PromptSpec(
        "a red circle left of a blue square", (RelationCheck("red circle", "left of", "blue square"),)).to_dict()))
    _sample(images, "0000.png", ("circle", "red"), "left of", ("square", "blue"), 0)
    argv = ["eval", "--images", str(tmp_path / "geneval"), "--out", str(tmp_path / "scores"), "--quiet"]
    assert run(argv, capsys)[0] == 0
    (tmp_path / "scores" / "my-notes.txt").write_text("what I saw")
    code, _, err = run(argv, capsys)
    assert code == 0 and f"report.html, results.jsonl, summary.json and images/: 1 file in {tmp_path / 'scores'}" in err
    assert "my-notes.txt" not in err


def test_a_prompt_files_repeated_prompts_are_said_before_any_image(tmp_path, capsys):
    prompts = tmp_path / "spatial.txt"
    prompts.write_text("a dog left of a cat\na red car\na dog left of a cat\n")
    code, _, err = run(["eval", "--prompts", str(prompts), "--seeds", "0", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "cannot look for 'dog'" in err      # the shapes detector: refused before any image
    assert f"l2s: skipped 1 prompt of {prompts} without a spatial relation" in err.splitlines()
    assert (f"l2s: 1 prompt of {prompts} repeats an earlier line: made and counted again, as the benchmark counts "
            "every line") in err.splitlines()


def test_messages_about_a_prompt_files_prompt_name_its_line(tmp_path, capsys):
    prompts = tmp_path / "spatial.txt"
    too_long = "a red circle to the left of a blue square. " + "It is sunny today. " * 150
    prompts.write_text(f"a red circle left of a blue square\n\na photo of a cat\na dog left of a cat\n{too_long}\n")
    argv = ["eval", "--model", "tiny", "--prompts", str(prompts), "--seeds", "0", "--quiet", "--out",
            str(tmp_path / "out")]
    code, _, err = run(argv, capsys)                       # the detector's refusal
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(f"l2s: error: {prompts}:4: the shapes detector cannot look for 'dog'"), line
    code, _, err = run(argv + ["--relations", "red circle,left of,blue square"], capsys)   # --relations'
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(f"l2s: error: {prompts}:4: object 'red circle' does not occur"), line
    prompts.write_text(f"a red circle left of a blue square\n\n{too_long}\n")
    code, _, err = run(argv, capsys)                       # the model's tokenizer's
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(f"l2s: error: {prompts}:3 ('a red circle to the left"), line


def test_a_prompt_the_detector_can_never_judge_is_said_apart_and_counts_nowhere(tmp_path, capsys):
    prompts = tmp_path / "spatial.txt"
    twin = "a red circle to the left of a red circle"
    prompts.write_text(f"a red circle to the left of a blue square\n{twin}\n")
    out = tmp_path / "run"
    code, table, err = run(["eval", "--prompts", str(prompts), "--seeds", "0", "--mode", "base", "--quiet",
                            "--no-contact-sheet", "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())["modes"]["base"]
    why = summary["no_verdict"][twin]
    assert "cannot tell the two apart" in why and (summary["n_images"], summary["n_images_no_verdict"]) == (1, 1)
    assert f"l2s: no verdict for 1 image of 1 prompt, in no count: {twin!r} ({why})" in err.splitlines()
    assert "no verdict (images, not counted)" in table and "/1 " in table.splitlines()[2]
    record = json.loads((out / "base" / "00001" / "samples" / "0000.json").read_text())
    assert record["correct"] is None and record["no_verdict"] == why
