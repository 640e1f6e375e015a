"""Evaluation runs: scoring recorded images, run_eval with a fake generator, reports and contact sheets."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from l2s.errors import L2SError
from l2s.evaluation import (
    RUN_DEPENDENT_META,
    comparable_summary,
    Detection,
    PromptSpec,
    RelationCheck,
    contact_sheet,
    evaluate_images,
    run_eval,
    score_image_folder,
)
from l2s.parsing import parse_prompt
from l2s.shapes import ShapesDetector, render, scene_for_relation, shapes_position_prompts
from l2s.steer import SteeringDiagnostics


# ---------------------------------------------------------------- scoring recorded images

def _shapes_records():
    rng = np.random.default_rng(0)
    records = []
    for k, relation in enumerate(["left of", "right of", "above", "below", "above", "left of"]):
        scene = scene_for_relation(rng, ("circle", "red"), relation, ("square", "blue"), size=48)
        claimed = "below" if k == 5 else relation  # the last prompt lies: its image must fail
        spec = PromptSpec(f"a photo of a red circle {claimed} a blue square",
                          (RelationCheck("red circle", claimed, "blue square"),), tag=f"t{k % 2}")
        records.append((render(scene), spec, {"name": f"img{k}", "seed": k}))
    return records


def test_evaluate_images_writes_results_and_summary(tmp_path):
    records = _shapes_records()
    summary = evaluate_images(records, ShapesDetector(), tmp_path)
    assert (summary.n_images, summary.n_correct) == (6, 5)
    assert summary.accuracy == pytest.approx(5 / 6)
    assert summary.per_relation["below"] == [1, 2] and summary.per_relation["left of"] == [1, 1]
    assert summary.per_tag == {"t0": [3, 3], "t1": [2, 3]}
    per_image = json.loads((tmp_path / "img5.json").read_text())
    assert per_image["correct"] is False and per_image["meta"] == {"seed": 5}
    assert per_image["checks"][0]["found"] == ["left of"]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == [f"img{k}" for k in range(6)]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["accuracy"] == pytest.approx(5 / 6)
    assert saved["n_prompts"] == 4 and saved["n_prompts_any_correct"] == 4  # repeated prompts group
    table = summary.table()
    assert "overall (images)" in table and "relation below" in table and "0.833" in table


def test_contact_sheet_draws_pass_and_fail(tmp_path):
    records = _shapes_records()
    summary = evaluate_images(records, ShapesDetector(), tmp_path / "run")
    path = contact_sheet([r[0] for r in records], summary.results, tmp_path / "sheet.png", columns=4, scale=2)
    sheet = Image.open(path)
    assert sheet.format == "PNG"
    cell_w = 48 * 2 + 8
    assert sheet.width == 4 * cell_w and sheet.height % 2 == 0
    cell_h = sheet.height // 2
    assert sheet.getpixel((1, 1)) == (0, 170, 0)  # first image passes: green border
    assert sheet.getpixel((cell_w + 1, cell_h + 1)) == (210, 0, 0)  # sixth fails: red border
    with pytest.raises(ValueError):
        contact_sheet([records[0][0]], [], tmp_path / "bad.png")


# ---------------------------------------------------------------- run_eval with a fake generator: the numbers

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
    # Scoring into the run's own folder would replace its summary; restarting it would remove the images.
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for restart in (False, True):
        with pytest.raises(L2SError, match="holds an 'l2s eval' run that generated its images"):
            score_image_folder(tmp_path / "steered", ShapesDetector(), tmp_path, progress=False, restart=restart)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == kept
    rescored_images = tmp_path / "rescored" / "images"       # the records of the rescoring above
    (tmp_path / "steered").rename(rescored_images / "mine")
    with pytest.raises(L2SError, match="would remove .*mine, the images to score"):
        score_image_folder(rescored_images / "mine", ShapesDetector(), tmp_path / "rescored", restart=True)
    assert (rescored_images / "mine" / "00002" / "samples" / "0005.png").is_file()


def test_in_a_spread_run_scoring_a_folder_names_the_bar_as_rank_0s_share(tmp_path, monkeypatch, capsys):
    from l2s.distributed import World
    from l2s.evaluation import folders

    class RankZeroOfTwo(World):   # rank 0 of a 2-process run; the other's share is not awaited here
        def gather(self, obj):
            return [obj]

        def broadcast(self, obj):
            return obj

    run_eval(SceneSteerer(), shapes_position_prompts(2, seed=0), ShapesDetector(), tmp_path / "run", seeds=[0, 1],
             progress=False, settings={"model": "fake"}, detector_name="shapes")
    monkeypatch.setattr(folders, "world", lambda: RankZeroOfTwo(0, 2))
    score_image_folder(tmp_path / "run" / "steered", ShapesDetector(), tmp_path / "scored", progress=True,
                       contact_sheets=False)
    assert "l2s eval (rank 0 of 2): 100%" in capsys.readouterr().err   # 2 of the 4 images: its share


def test_the_progress_bar_takes_the_callers_name(tmp_path, capsys):
    # the bench runs one eval per part: its bar names the part, not "l2s eval" for every one
    run_eval(SceneSteerer(), shapes_position_prompts(1, seed=0), ShapesDetector(), tmp_path, seeds=[0],
             progress=True, settings={"model": "fake"}, detector_name="shapes", progress_label="l2s shapes bench ood")
    err = capsys.readouterr().err
    assert "l2s shapes bench ood: 100%" in err and "l2s eval" not in err


# ---------------------------------------------------------------- run_eval in batches on a tiny FLUX model

class Calls:
    """Wraps a steerer: records every call; with ``stop_after`` calls made, the next one raises
    :class:`Stopped` (a run killed between two batches)."""

    def __init__(self, steerer, stop_after=None):
        self.steerer, self.stop_after, self.calls = steerer, stop_after, []

    def plan(self, prompt):
        return self.steerer.plan(prompt)

    def __call__(self, prompt, *, seed, steer, **kwargs):
        if len(self.calls) == self.stop_after:
            raise Stopped
        self.calls.append((prompt, seed, steer))
        return self.steerer(prompt, seed=seed, steer=steer, **kwargs)


class Stopped(Exception):
    pass


TINY_SEEDS = [0, 1]


@pytest.fixture(scope="module")
def tiny_eval():
    """A tiny FLUX steerer whose classifier is sensitive enough that images reach the first step's
    loss target after different numbers of iterations (so a batch's images exit on their own)."""
    import dataclasses

    import torch

    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
    from l2s.pipelines import wrap_pipeline
    from l2s.steer import custom_schedule

    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(3000.0)
    schedule = custom_schedule(2, steered=[0, 1], iterations=4, step_size=1.0)
    schedule = dataclasses.replace(schedule, loss_targets=(2.15, *schedule.loss_targets[1:]))
    specs = shapes_position_prompts(4, seed=0)
    kwargs = dict(seeds=TINY_SEEDS, num_inference_steps=2, height=32, width=32, schedule=schedule,
                  progress=False, contact_sheets=False, settings={"model": "tiny"}, detector_name="shapes")
    return wrap_pipeline(pipe, classifier), specs, kwargs


@pytest.fixture(scope="module")
def one_at_a_time(tiny_eval, tmp_path_factory):
    """The run made one image per call (batch_size 1): the reference of the batched runs."""
    steerer, specs, kwargs = tiny_eval
    out = tmp_path_factory.mktemp("one") / "run"
    calls = Calls(steerer)
    run_eval(calls, specs, ShapesDetector(), out, batch_size=1, **kwargs)
    return out, calls.calls


def _records(out):
    """results.jsonl without timings and batch sizes (how the images were grouped), and the
    steering probabilities apart (a batch's classifier rounds differently in the last bits)."""
    records, probabilities = [], []
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        meta = record["meta"]
        probabilities += [meta.pop("target_probability_first"), meta.pop("target_probability_last")]
        for key in RUN_DEPENDENT_META:
            meta.pop(key)
        records.append(record)
    return records, probabilities


def _summary(out):
    return comparable_summary(json.loads((out / "summary.json").read_text()))


def _assert_same_run(out, reference):
    assert _summary(out) == _summary(reference)
    (records, probabilities), (expected, expected_probabilities) = _records(out), _records(reference)
    assert records == expected
    for mine, theirs in zip(probabilities, expected_probabilities, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)
    pngs = sorted(p.relative_to(reference) for p in reference.glob("*/*/samples/*.png"))
    assert pngs == sorted(p.relative_to(out) for p in out.glob("*/*/samples/*.png")) and len(pngs) == 16
    for png in pngs:
        a, b = (np.asarray(Image.open(root / png), dtype=np.int16) for root in (out, reference))
        assert np.abs(a - b).max() <= 1, png


def test_batched_run_makes_the_run_of_one_image_per_call(tiny_eval, one_at_a_time, tmp_path):
    steerer, specs, kwargs = tiny_eval
    reference, single_calls = one_at_a_time
    # batch_size 1: today's calls, one prompt and one seed each, both modes of a pair in turn
    assert single_calls[:2] == [(specs[0].prompt, 0, False), (specs[0].prompt, 0, True)] and len(single_calls) == 16
    assert all(isinstance(prompt, str) for prompt, _, _ in single_calls)
    calls = Calls(steerer)
    report = run_eval(calls, specs, ShapesDetector(), tmp_path, batch_size=3, **kwargs)
    # 8 (prompt, seed) pairs per mode: batches of 3, 3 and 2, the modes taking turns
    assert [(len(prompts), steer) for prompts, _, steer in calls.calls] == [
        (3, False), (3, True), (3, False), (3, True), (2, False), (2, True)]
    assert calls.calls[0][:2] == ([specs[0].prompt] * 2 + [specs[1].prompt], [0, 1, 0])
    _assert_same_run(tmp_path, reference)
    steered = report.modes["steered"].records
    assert [r.meta["batch"] for r in steered] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert len({r.meta["iterations"] for r in steered}) > 1  # the images of a batch exit on their own
    assert steered[0].meta["generate_s"] == steered[1].meta["generate_s"]  # the batch's time, shared


def test_batched_run_resumes_without_making_finished_images_again(tiny_eval, one_at_a_time, tmp_path):
    steerer, specs, kwargs = tiny_eval
    reference, _ = one_at_a_time
    with pytest.raises(Stopped):   # killed after the first batch: three base images are finished
        run_eval(Calls(steerer, stop_after=1), specs, ShapesDetector(), tmp_path, batch_size=3, **kwargs)
    assert len(list(tmp_path.glob("*/*/samples/*.json"))) == 3
    calls = Calls(steerer)
    report = run_eval(calls, specs, ShapesDetector(), tmp_path, batch_size=3, **kwargs)
    finished = {(specs[index].prompt, seed, False) for index, seed in [(0, 0), (0, 1), (1, 0)]}
    made = {(prompt, seed, steer) for prompts, seeds, steer in calls.calls for prompt, seed in zip(prompts, seeds)}
    assert len(made) == 13 and not made & finished
    assert [len(prompts) for prompts, _, _ in calls.calls] == [3, 3, 2, 3, 2]  # base: 5 left, steered: 8
    assert report.modes["base"].status_counts() == {"resumed": 3, "generated": 5}
    _assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_batch_size_must_be_a_positive_integer(size, tmp_path):
    from l2s.errors import UsageError

    with pytest.raises(UsageError, match="batch_size must be a positive integer"):
        run_eval(SceneSteerer(), shapes_position_prompts(1, seed=0), ShapesDetector(), tmp_path, batch_size=size)
    assert not (tmp_path / "base").exists()


def test_what_a_call_would_refuse_is_refused_before_the_run_folder_is_made(tiny_eval, tmp_path):
    import dataclasses

    from l2s.classifier import RelationClassifier
    from l2s.errors import ClassifierMismatchError, UsageError
    from l2s.pipelines import wrap_pipeline

    steerer, specs, kwargs = tiny_eval
    call = dict(seeds=[0], num_inference_steps=2, height=32, width=32, progress=False)
    for change, error, message in (
            (dict(num_inference_steps=0), UsageError, "num_inference_steps must be a positive integer"),
            (dict(height=33), UsageError, "multiples of"),
            (dict(schedule="bogus"), UsageError, "bogus"),
            (dict(seeds=0), UsageError, "seeds must be a list of integers, got 0")):
        with pytest.raises(error, match=message):
            run_eval(steerer, specs[:1], ShapesDetector(), tmp_path / "run", **{**call, **change})
    with pytest.raises(UsageError, match="detector must have a detect"):
        run_eval(steerer, specs[:1], None, tmp_path / "run", **call)
    config = dataclasses.replace(steerer.classifier.config, channels=steerer.classifier.config.channels + 1)
    unfit = wrap_pipeline(steerer.pipe, RelationClassifier(config).eval())
    with pytest.raises(ClassifierMismatchError, match="maps per object"):
        run_eval(unfit, specs[:1], ShapesDetector(), tmp_path / "run", **call)
    assert not (tmp_path / "run").exists()


def test_without_settings_a_run_is_known_by_its_sampling_arguments(tiny_eval, tmp_path):
    steerer, specs, _ = tiny_eval
    call = dict(seeds=[0], num_inference_steps=2, height=32, width=32, progress=False, contact_sheets=False,
                modes=["base"])
    run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **call)
    with pytest.raises(L2SError, match=r"other settings \(height: 32 -> 16, width: 32 -> 16\)"):
        run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **{**call, "height": 16, "width": 16})
    assert run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **call).modes["base"].status_counts() == {
        "resumed": 1}
    recorded = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**recorded, "generation": {}}))   # as runs recorded it before
    assert run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **call).modes["base"].status_counts() == {
        "resumed": 1}
    # beside the settings, what the images were made with (no schedule: no image is steered)
    assert recorded["resolved"] == {"sampling": {"num_inference_steps": 2, "height": 32, "width": 32,
                                                 "guidance_scale": None, "true_cfg_scale": 1.0}}


def test_a_resume_whose_settings_now_resolve_otherwise_warns_once_naming_them(tiny_eval, tmp_path, caplog):
    steerer, specs, _ = tiny_eval
    call = dict(seeds=[0], num_inference_steps=2, height=32, width=32, progress=False, contact_sheets=False,
                modes=["base"])
    run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **call)
    asked, resolved = (json.loads((tmp_path / "run.json").read_text())[k] for k in ("generation", "resolved"))
    other_default = {"sampling": {**resolved["sampling"], "true_cfg_scale": 2.0}}   # as an older version's
    for earlier, warned in ((resolved, False), (None, False), (other_default, True)):   # None: recorded before
        (tmp_path / "run.json").write_text(json.dumps({"generation": asked, **({"resolved": earlier} if earlier
                                                                                else {})}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="l2s.evaluation"):
            report = run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, **call)
        assert report.modes["base"].status_counts() == {"resumed": 1}   # the requested settings still match
        lines = [r.getMessage() for r in caplog.records if "resolve" in r.getMessage()]
        assert len(lines) == warned, lines
    assert "(sampling.true_cfg_scale: 2.0 -> 1.0)" in lines[0] and "\n" not in lines[0]


def test_every_part_of_a_run_keeps_what_it_resolved_to_and_each_resume_that_differs_warns(tiny_eval, tmp_path,
                                                                                          caplog):
    steerer, specs, _ = tiny_eval
    call = dict(num_inference_steps=2, height=32, width=32, progress=False, contact_sheets=False, modes=["base"])
    run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, seeds=[0], **call)
    recorded = json.loads((tmp_path / "run.json").read_text())
    now = recorded["resolved"]
    first = {"sampling": {**now["sampling"], "true_cfg_scale": 2.0}}        # as an older version resolved it
    (tmp_path / "run.json").write_text(json.dumps({**recorded, "resolved": first}))
    for seeds in ([0, 1], [0, 1, 2]):                  # two resumes, each one growing the run by a seed
        caplog.clear()
        with caplog.at_level("WARNING", logger="l2s.evaluation"):
            run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, seeds=seeds, **call)
        assert len([r for r in caplog.records if "resolve to now" in r.getMessage()]) == 1, seeds
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["resolved"] == first                # what the first image was made with is kept
    assert recorded["resolved_later"] == [{"images_before": 1, "resolved": now}]    # the second resume: as before
    run_eval(steerer, specs[:1], ShapesDetector(), tmp_path, seeds=[0, 1, 2], **{**call, "modes": ["base", "steered"]})
    later = json.loads((tmp_path / "run.json").read_text())["resolved_later"]
    assert len(later) == 2 and later[1]["images_before"] == 3 and "schedule" in later[1]["resolved"]


def test_a_schedule_described_in_other_words_is_no_change_its_iterations_are(tmp_path, caplog):
    from l2s.evaluation.run_dir import warn_changed_resolved

    schedule = {"name": "reference", "iterations": [16, 0], "description": "the published schedule"}
    (tmp_path / "run.json").write_text(json.dumps({"generation": {}, "resolved": {"schedule": schedule}}))
    with caplog.at_level("WARNING", logger="l2s.evaluation"):
        warn_changed_resolved(tmp_path, {"schedule": {**schedule, "description": "reworded since"}})
        assert not caplog.records          # prose makes no image differ
        warn_changed_resolved(tmp_path, {"schedule": {**schedule, "iterations": [8, 0]}})
    (line,) = [r.getMessage() for r in caplog.records]
    assert "(schedule.iterations: [16, 0] -> [8, 0])" in line


def test_a_prompt_without_a_spec_is_refused_by_its_number(tmp_path):
    from l2s.errors import UsageError
    from l2s.evaluation import spec_from_prompt

    specs = [*shapes_position_prompts(1, seed=0), spec_from_prompt("a red circle")]   # no relation: None
    with pytest.raises(UsageError, match=r"prompt 1: expected a PromptSpec, got None \(spec_from_prompt"):
        run_eval(SceneSteerer(), specs, ShapesDetector(), tmp_path)
    assert not (tmp_path / "base").exists()


def test_errors_name_a_prompt_as_the_caller_does(tmp_path):
    from l2s.errors import UsageError

    specs = [*shapes_position_prompts(1, seed=0), PromptSpec("a dog left of a cat", (RelationCheck("dog", "left of",
                                                                                                  "cat"),))]
    with pytest.raises(L2SError, match=r"^prompts.txt:7: the shapes detector cannot look for 'dog'"):
        run_eval(SceneSteerer(), specs, ShapesDetector(), tmp_path, prompt_names=["prompts.txt:1", "prompts.txt:7"])
    with pytest.raises(UsageError, match="prompt_names must name each of the 2 prompts, got 1 names"):
        run_eval(SceneSteerer(), specs, ShapesDetector(), tmp_path, prompt_names=["prompts.txt:1"])
    assert not (tmp_path / "base").exists()


class WarmedSteerer(SceneSteerer):
    """Records each warm-up: its prompt(s), seed(s), whether steered, and how many calls came before."""

    def __init__(self):
        super().__init__()
        self.warm_ups = []

    def warm_up(self, prompt, steer=False, **kwargs):
        self.warm_ups.append((prompt, kwargs["seed"], steer, len(self.calls)))


def test_one_untimed_warm_up_image_before_the_first_generated_one_and_none_on_a_finished_run(tmp_path):
    specs = shapes_position_prompts(2, seed=0)
    steerer = WarmedSteerer()
    run_eval(steerer, specs, ShapesDetector(), tmp_path, seeds=[3, 4], progress=False, settings={"model": "fake"},
             detector_name="shapes", batch_size=1)
    # per mode, the first image's prompt and seed, before any call
    assert steerer.warm_ups == [(specs[0].prompt, 3, False, 0), (specs[0].prompt, 3, True, 0)]
    again = WarmedSteerer()
    run_eval(again, specs, ShapesDetector(), tmp_path, seeds=[3, 4], progress=False, settings={"model": "fake"},
             detector_name="shapes")
    assert again.warm_ups == [] and again.calls == []        # every image resumed: nothing to warm up for


def test_a_batched_run_offers_its_first_batch_whole_to_the_warm_up(tmp_path):
    class Warmed(Exception):
        pass

    class StopAfterWarmUp(WarmedSteerer):   # this fake makes no batches: the warm-up is what is looked at
        def warm_up(self, prompt, steer=False, **kwargs):
            super().warm_up(prompt, steer, **kwargs)
            raise Warmed

    specs = shapes_position_prompts(2, seed=0)
    batched = StopAfterWarmUp()   # the first batch, for the steerer to warm up as its shapes need
    with pytest.raises(Warmed):
        run_eval(batched, specs, ShapesDetector(), tmp_path / "batched", seeds=[3, 4], progress=False,
                 settings={"model": "fake"}, detector_name="shapes", batch_size=3, modes=("base",))
    assert batched.warm_ups == [([specs[0].prompt] * 2 + [specs[1].prompt], [3, 4, 3], False, 0)]


def test_settings_known_before_a_model_loads_are_compared_then(tmp_path):
    from l2s.errors import L2SError
    from l2s.evaluation.run_dir import refuse_changed_settings
    from l2s.files import DamagedFileError

    (tmp_path / "run.json").write_text(json.dumps({"generation": {"steps": 2, "relations": "a,above,b",
                                                                  "engine": "eager"}}))
    refuse_changed_settings(tmp_path, {"steps": 2, "relations": "a,above,b"}, not_yet=("engine",))
    with pytest.raises(L2SError, match=r"relations: 'a,above,b' -> \(absent\)"):   # dropped since
        refuse_changed_settings(tmp_path, {"steps": 2}, not_yet=("engine",))
    with pytest.raises(L2SError, match="engine: 'eager' -> 'compile'"):
        refuse_changed_settings(tmp_path, {"steps": 2, "relations": "a,above,b", "engine": "compile"})
    (tmp_path / "run.json").write_text(json.dumps({"generation": [1]}))
    with pytest.raises(DamagedFileError, match="generation settings are not a JSON object"):
        refuse_changed_settings(tmp_path, {"steps": 2})


class TwinSteerer(SceneSteerer):
    """Draws "a red circle to the left of a red circle" as a red circle beside a blue square (a scene
    refuses one object twice): the detector still finds one red circle, its verdict still none."""

    def __call__(self, prompt, **kwargs):
        return super().__call__(prompt.replace(" of a red circle", " of a blue square"), **kwargs)


def test_a_prompt_the_detector_can_never_judge_has_no_verdict_and_is_in_no_count(tmp_path):
    same = "a red circle to the left of a red circle"      # one detection for both circles
    specs = [*shapes_position_prompts(2, seed=0), PromptSpec(same, (RelationCheck("red circle", "left of",
                                                                                  "red circle"),))]
    report = run_eval(TwinSteerer(), specs, ShapesDetector(), tmp_path, seeds=[0, 1], progress=False,
                      settings={"model": "fake"}, detector_name="shapes")
    steered, base = report.modes["steered"].summary, report.modes["base"].summary
    assert (steered.n_correct, steered.n_images, steered.n_no_verdict) == (4, 4, 2) and steered.accuracy == 1.0
    judged = {spec.checks[0].relation: [0, 2] for spec in specs[:2]}       # the twin's "left of" in no count
    assert (base.n_correct, base.n_images, base.per_relation, base.n_prompts) == (0, 4, judged, 2)
    record = json.loads((tmp_path / "steered" / "00002" / "samples" / "0001.json").read_text())
    assert record["correct"] is None and record["score"] is None and record["checks"][0]["holds"] is None
    assert "cannot tell the two apart" in record["no_verdict"] and record["reason"] == record["no_verdict"]
    saved = json.loads((tmp_path / "summary.json").read_text())["modes"]["steered"]
    assert saved["n_images_no_verdict"] == 2 and saved["no_verdict"] == {same: record["no_verdict"]}
    assert saved["accuracy"] == 1.0 and saved["n_images"] == 4
    assert report.no_verdict_line() == (f"no verdict for 4 images of 1 prompt, in no count: {same!r} "
                                        f"({record['no_verdict']})")
    assert "no verdict (images, not counted)          2          2" in report.table()
    page = (tmp_path / "report.html").read_text()
    assert "<h2>No verdict</h2>" in page and "None: every image with a verdict is correct." in page


def test_a_record_written_before_such_prompts_had_no_verdict_resumes_without_one(tmp_path):
    same = "a red circle to the left of a red circle"
    specs = [PromptSpec(same, (RelationCheck("red circle", "left of", "red circle"),))]
    run_eval(TwinSteerer(), specs, ShapesDetector(), tmp_path, seeds=[0], progress=False,
             settings={"model": "fake"}, detector_name="shapes")
    path = tmp_path / "steered" / "00000" / "samples" / "0000.json"
    record = json.loads(path.read_text())
    del record["no_verdict"]                                  # as an earlier l2s wrote it: a failure
    record.update(correct=False, score=0.0, checks=[{**record["checks"][0], "holds": False}])
    path.write_text(json.dumps(record))
    report = run_eval(TwinSteerer(), specs, ShapesDetector(), tmp_path, seeds=[0], progress=False,
                      settings={"model": "fake"}, detector_name="shapes")
    part = report.modes["steered"]
    assert part.status_counts() == {"resumed": 1}
    assert (part.summary.n_images, part.summary.n_no_verdict, part.records[0].result.correct) == (0, 1, None)
