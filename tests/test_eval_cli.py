"""``l2s eval`` and the training subcommands: prompt sets, run directory, scoring, resume, errors."""
import json
import shutil
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

import l2s.training.train
from l2s.evaluation import (
    geneval_metadata,
    parse_seeds,
    read_prompt_file,
    resolve_prompt_set,
    run_eval,
    score_image_folder,
    shapes_multi_relation_prompts,
    shapes_position_prompts,
    spec_from_metadata,
)
from l2s.cli import main
from l2s.errors import L2SError
from l2s.evaluation import Detection, PromptSpec, RelationCheck
from l2s.parsing import parse_prompt
from l2s.pipelines import SteeringPipeline
from l2s.relations import PROMPT_PHRASE
from l2s.shapes import ShapesDetector, render, scene_for_relation
from l2s.steer import SteeringDiagnostics


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("l2s: error:")]


# ---------------------------------------------------------------------------------------------
# Prompt sets
# ---------------------------------------------------------------------------------------------

def test_shapes_position_prompts_name_what_the_detector_finds_and_the_parser_reads():
    specs = shapes_position_prompts(30, seed=3)
    assert len({s.prompt for s in specs}) == 30
    detector = ShapesDetector()
    for spec in specs:
        (check,) = spec.checks
        assert spec.prompt == f"a {check.subject} {PROMPT_PHRASE[check.relation]} a {check.object}"
        colour_a, shape_a = detector.parse_label(check.subject)
        colour_b, shape_b = detector.parse_label(check.object)
        assert None not in (colour_a, shape_a, colour_b, shape_b) and colour_a != colour_b
        (triplet,) = parse_prompt(spec.prompt).triplets  # steering sees the checked relation
        assert (triplet.subject, triplet.relation, triplet.object) == (check.subject, check.relation, check.object)
    assert {s.checks[0].relation for s in specs} == {"left of", "right of", "above", "below"}
    assert [s.prompt for s in shapes_position_prompts(30, seed=3)] == [s.prompt for s in specs]
    assert [s.prompt for s in shapes_position_prompts(30, seed=4)] != [s.prompt for s in specs]


@pytest.mark.parametrize("n_objects, n_relations", [(3, 2), (4, 3), (4, 2)])
def test_shapes_multi_relation_prompts_chain_their_checks(n_objects, n_relations):
    specs = shapes_multi_relation_prompts(n_objects, n_relations, n=10, seed=0)
    assert len({s.prompt for s in specs}) == 10
    for spec in specs:
        assert spec.tag == f"{n_objects}obj_{n_relations}rel" and not spec.prompt.startswith("a photo")
        assert len(spec.objects) == n_objects and len(spec.checks) == n_relations
        assert len({c.relation for c in spec.checks}) == n_relations
        assert len({label.split()[0] for label in spec.objects}) == n_objects  # distinct colours
        parsed = [(t.subject, t.relation, t.object) for t in parse_prompt(spec.prompt).triplets]
        assert parsed == [(c.subject, c.relation, c.object) for c in spec.checks]


def test_geneval_metadata_is_geneval_format_and_round_trips():
    spec = PromptSpec("a photo of a dog right of a teddy bear", (RelationCheck("dog", "right of", "teddy bear"),))
    published = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                                {"class": "dog", "count": 1, "position": ["right of", 0]}],
                 "prompt": "a photo of a dog right of a teddy bear"}
    assert geneval_metadata(spec) == published
    assert spec_from_metadata(published) == spec
    for multi in shapes_multi_relation_prompts(4, 3, n=3) + shapes_multi_relation_prompts(4, 2, n=3):
        line = geneval_metadata(multi)
        assert "include" in line and "checks" not in line
        assert spec_from_metadata(json.loads(json.dumps(line))) == multi
    diagonal = PromptSpec("a cat top-left of a dog", (RelationCheck("cat", "top-left of", "dog"),))
    assert geneval_metadata(diagonal)["checks"] and spec_from_metadata(geneval_metadata(diagonal)) == diagonal
    counting = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "prompt": "a photo of three cats"}
    assert spec_from_metadata(counting) is None


def test_read_prompt_file_accepts_geneval_promptspec_and_plain_lines(tmp_path):
    lines = [
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"},
        {"tag": "position", "include": [{"class": "kite", "count": 1},
                                        {"class": "wine glass", "count": 1, "position": ["above", 0]}],
         "prompt": "a photo of a wine glass above a kite"},
        PromptSpec("a cat below a dog", (RelationCheck("cat", "below", "dog"),), tag="mine").to_dict(),
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    specs, skipped = read_prompt_file(path)
    assert skipped == 1
    assert [(s.prompt, s.tag, s.checks) for s in specs] == [
        ("a photo of a wine glass above a kite", "position", (RelationCheck("wine glass", "above", "kite"),)),
        ("a cat below a dog", "mine", (RelationCheck("cat", "below", "dog"),))]

    text = tmp_path / "spatial.txt"
    text.write_text("a bird on the left of a bear\na cat next to a dog\na red car\n")
    specs, skipped = read_prompt_file(text)
    assert skipped == 1
    assert [s.checks for s in specs] == [(RelationCheck("bird", "left of", "bear"),),
                                         (RelationCheck("cat", "next to", "dog"),)]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "checks": [{"subject": "a", "relation": "left of"}]}\n')
    with pytest.raises(L2SError, match="bad.jsonl:1"):
        read_prompt_file(bad)


def test_resolve_prompt_set_names():
    specs, _ = resolve_prompt_set("geneval", 5, seed=1)
    assert len(specs) == 5 and all(s.prompt.startswith("a photo of ") for s in specs)
    specs, _ = resolve_prompt_set("multi:3,2", 4)
    assert len(specs) == 4 and all(len(s.checks) == 2 for s in specs)
    specs, _ = resolve_prompt_set("shapes:3,2", 4)
    assert all(s.tag == "3obj_2rel" for s in specs)
    assert len(resolve_prompt_set("shapes")[0]) == 100


def test_parse_seeds():
    assert parse_seeds("0,1,2,3") == [0, 1, 2, 3]
    assert parse_seeds("7, 0-2") == [7, 0, 1, 2]
    for bad in ("", "a", "1,1", "3-1", "-1"):
        with pytest.raises(L2SError, match="seeds"):
            parse_seeds(bad)


# ---------------------------------------------------------------------------------------------
# run_eval with a fake generator: the numbers
# ---------------------------------------------------------------------------------------------

class FixedBoxes:
    """Stub detector: the first label of every prompt at the left, the second at the right."""

    def detect(self, image, labels):
        boxes = [(0.0, 20.0, 10.0, 30.0), (40.0, 20.0, 50.0, 30.0)]
        return {label: Detection(label, box, 0.9) for label, box in zip(labels, boxes)}


class SceneSteerer:
    """Stands in for a SteeringPipeline: draws the prompt's two shapes, in the prompted relation when
    steered and in the opposite one otherwise, so the shapes detector must score base 0, steered 1."""

    OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

    def __init__(self):
        self.calls = []

    def plan(self, prompt):
        return parse_prompt(prompt)

    def __call__(self, prompt, *, seed, steer, **kwargs):
        self.calls.append((prompt, seed, steer))
        (t,) = parse_prompt(prompt).triplets
        relation = t.relation if steer else self.OPPOSITE[t.relation]
        scene = scene_for_relation(np.random.default_rng(seed), tuple(t.subject.split()[::-1]), relation,
                                   tuple(t.object.split()[::-1]), size=48)
        return SimpleNamespace(images=[render(scene)], timings={"total": 0.25},
                               plan=SimpleNamespace(steered=True, parsed=parse_prompt(prompt)),
                               diagnostics=SteeringDiagnostics())


def test_summary_numbers_with_fixed_boxes(tmp_path):
    specs = [PromptSpec("a red circle to the left of a blue square", (RelationCheck("red circle", "left of", "blue square"),)),
             PromptSpec("a red circle above a blue square", (RelationCheck("red circle", "above", "blue square"),)),
             PromptSpec("a green diamond to the right of a cyan circle",
                        (RelationCheck("green diamond", "right of", "cyan circle"),), tag="other")]
    report = run_eval(SceneSteerer(), specs, FixedBoxes(), tmp_path, seeds=[0, 1], progress=False,
                      settings={"model": "fake"}, detector_name="fixed")
    for mode in ("base", "steered"):
        summary = report.modes[mode].summary
        assert (summary.n_correct, summary.n_images) == (2, 6)
        assert summary.per_relation == {"left of": [2, 2], "above": [0, 2], "right of": [0, 2]}
        assert summary.per_tag == {"position": [2, 4], "other": [0, 2]}
        assert (summary.n_prompts_any_correct, summary.n_prompts) == (1, 3)
        assert report.modes[mode].generate_s_per_image == pytest.approx(0.25)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["modes"]["steered"]["accuracy"] == pytest.approx(1 / 3)
    assert saved["modes"]["base"]["per_relation"]["above"] == {"holds": 0, "total": 2, "accuracy": 0.0}
    assert saved["accuracy_gain"] == 0.0
    table = report.table()
    assert "relation above" in table and "2/6 0.333" in table and "tag other" in table
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 and sum(json.loads(line)["correct"] for line in lines) == 4


def test_shapes_detector_scores_base_against_steered(tmp_path):
    specs = shapes_position_prompts(3, seed=0)
    steerer = SceneSteerer()
    report = run_eval(steerer, specs, ShapesDetector(), tmp_path, seeds=[0, 5], progress=False,
                      settings={"model": "fake"}, detector_name="shapes")
    assert report.modes["base"].summary.accuracy == 0.0
    assert report.modes["steered"].summary.accuracy == 1.0
    assert report.to_dict()["accuracy_gain"] == 1.0
    # Same seeds in both modes, interleaved per prompt and seed.
    assert steerer.calls[:4] == [(specs[0].prompt, 0, False), (specs[0].prompt, 0, True),
                                 (specs[0].prompt, 5, False), (specs[0].prompt, 5, True)]
    assert sorted(p.name for p in (tmp_path / "steered" / "00002" / "samples").iterdir()) == [
        "0000.json", "0000.png", "0005.json", "0005.png"]
    record = json.loads((tmp_path / "steered/00001/samples/0005.json").read_text())
    assert record["prompt"] == specs[1].prompt and record["correct"] is True
    assert record["meta"]["image"] == "steered/00001/samples/0005.png"
    assert (tmp_path / "contact_sheet_01.png").is_file()

    # Rescoring an existing run folder gives the same verdicts.
    rescored = score_image_folder(tmp_path / "steered", ShapesDetector(), tmp_path / "rescored",
                                  detector_name="shapes", progress=False, contact_sheets=False)
    assert rescored.modes["images"].summary.n_correct == 6


# ---------------------------------------------------------------------------------------------
# --images: a hand-made GenEval folder
# ---------------------------------------------------------------------------------------------

def _sample(folder, name, subject, relation, obj, seed):
    scene = scene_for_relation(np.random.default_rng(seed), subject, relation, obj, size=48)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    render(scene).save(folder / "samples" / name)


def test_score_geneval_folder_and_resume(tmp_path, capsys):
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

    out = tmp_path / "scores"
    code, stdout, err = run(["eval", "--images", str(images), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    scored = summary["modes"]["images"]
    assert (scored["n_correct"], scored["n_images"], scored["accuracy"]) == (3, 4, 0.75)
    assert scored["per_relation"]["left of"] == {"holds": 1, "total": 2, "accuracy": 0.5}
    assert summary["settings"]["folders_without_position"] == 1
    assert "3/4 0.750" in stdout
    wrong = json.loads((out / "images/00000/samples/0001.json").read_text())
    assert wrong["correct"] is False and "right of" in wrong["reason"]
    assert (out / "contact_sheet_01.png").is_file()

    code, _, _ = run(["eval", "--images", str(images), "--out", str(out), "--quiet"], capsys)
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["modes"]["images"]["status_counts"] == {"resumed": 4}

    code, _, _ = run(["eval", "--images", str(images), "--out", str(out), "--quiet", "--rule", "t2i_compbench"], capsys)
    again = json.loads((out / "summary.json").read_text())["modes"]["images"]
    assert code == 0 and again["status_counts"] == {"rescored": 4} and again["n_correct"] == 3


# ---------------------------------------------------------------------------------------------
# The command on the tiny model
# ---------------------------------------------------------------------------------------------

TINY_RUN = ["eval", "--prompts", "shapes", "--n-prompts", "2", "--seeds", "0", "--steps", "2", "--quiet"]


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
    summary = json.loads((tiny_run / "summary.json").read_text())
    for mode in ("base", "steered"):
        mine = [r for r in records if r["meta"]["mode"] == mode]
        assert summary["modes"][mode]["n_images"] == 2
        assert summary["modes"][mode]["n_correct"] == sum(r["correct"] for r in mine)
    assert summary["settings"]["steps"] == 2 and summary["settings"]["detector"] == "shapes"
    assert (tiny_run / "contact_sheet_01.png").is_file()


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
    assert len(calls) == 1 and calls[0][1:] == (0, False)
    assert "base" in stdout and "steered" in stdout and "relation" in stdout and "s/image" in stdout
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert counts["base"]["status_counts"] == {"resumed": 1, "generated": 1}
    assert counts["steered"]["status_counts"] == {"resumed": 2}

    code, _, err = run(TINY_RUN[:-2] + ["3", "--quiet", "--out", str(out)], capsys)
    assert code == 2 and len(calls) == 1
    (line,) = error_lines(err)
    assert "steps: 2 -> 3" in line
    # images steered with another step size are not mixed in either
    code, _, err = run(TINY_RUN + ["--step-size", "1", "--out", str(out)], capsys)
    assert code == 2 and len(calls) == 1
    (line,) = error_lines(err)
    assert "step_size: None -> 1.0" in line
    run_file = out / "run.json"
    recorded = json.loads(run_file.read_text())
    del recorded["generation"]["step_size"]          # as written before the setting existed
    run_file.write_text(json.dumps(recorded))
    code, _, err = run(TINY_RUN + ["--out", str(out)], capsys)
    assert code == 2 and "step_size: (not recorded) -> None" in error_lines(err)[0]


# ---------------------------------------------------------------------------------------------
# Errors and help
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--prompts", "nosuch"], "--prompts"),
    (["--prompts", "multi:3"], "multi:N_OBJ,N_REL"),
    (["--prompts", "multi:9,9"], "no prompt pattern"),
    (["--prompts", "shapes:3,2,1"], "--prompts"),
    (["--seeds", "0,x"], "--seeds"),
    (["--n-prompts", "0"], "--n-prompts"),
    (["--prompts", "geneval"], "--detector PATH"),
    (["--detector", "/nonexistent/owl"], "no detector checkpoint"),
    (["--images", "/nonexistent/dir"], "no such directory"),
])
def test_bad_eval_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(SteeringPipeline, "__call__", lambda *a, **k: pytest.fail("must not generate"))
    code, _, err = run(["eval", "--out", str(tmp_path / "o"), "--quiet"] + argv, capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert message in line, line
    assert not (tmp_path / "o" / "base").exists()


@pytest.mark.parametrize("argv, options", [
    (["make-data", "--help"], ["--source", "--annotations", "--out"]),
    (["train", "--help"], ["--out", "--epochs", "DATASET"]),
    (["eval", "--help"], ["--prompts", "--seeds", "--mode", "--detector", "--classifier", "--images", "--rule"]),
    (["shapes", "train-model", "--help"], ["--out", "--steps"]),
])
def test_subcommand_help(argv, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: l2s " + argv[0])
    for option in options:
        assert option in text, option


def test_delegated_subcommand_gets_the_remaining_arguments(monkeypatch, capsys):
    received = []
    monkeypatch.setattr(l2s.training.train, "train_main", lambda argv: received.append(argv) or 7)
    assert main(["train", "data", "--out", "x"]) == 7 and received == [["data", "--out", "x"]]

    def refuse(argv):
        raise L2SError("no such dataset")

    monkeypatch.setattr(l2s.training.train, "train_main", refuse)
    code, _, err = run(["train", "data", "--out", "x"], capsys)
    assert code == 2 and error_lines(err) == ["l2s: error: no such dataset"]


def test_missing_delegated_function_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "l2s.training.dataset", types.ModuleType("l2s.training.dataset"))
    code, _, err = run(["make-data", "--help"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "'l2s make-data' is not available" in line and "make_data_main" in line


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
