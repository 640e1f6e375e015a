"""``l2s.evaluation.generate_images``: the library behind ``l2s generate``'s multi-image runs."""
import json

import pytest

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.errors import UsageError
from l2s.evaluation import GenerateOptions, generate_images, image_jobs, open_image_run
from l2s.pipelines import wrap_pipeline
from l2s.steer import custom_schedule

PROMPTS = ["a cat above a dog", "a cup"]


@pytest.fixture(scope="module")
def steerer():
    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, guidance_embeds=True, seed=0)
    return wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=1))


def test_a_run_writes_a_folder_per_image_resumes_and_refuses_other_images(steerer, tmp_path):
    tmp_path = tmp_path / "many"      # not there yet: the run makes it
    jobs, settings = image_jobs(PROMPTS, [0, 1]), {"model": "tiny"}
    options = GenerateOptions(schedule=custom_schedule(2, steered=[0], iterations=1, step_size=1.0),
                              sampling={"num_inference_steps": 2, "height": 32, "width": 32, "progress": False},
                              judge=lambda image, prompt: "cat" in prompt or None, context={"model": "tiny"})
    said = []
    entries, names = generate_images(steerer, jobs, tmp_path, options, resume=open_image_run(tmp_path, jobs, settings, False),
                                     source="tiny", settings=settings, batch_size=3, say=said.append)
    assert [e["folder"] for e in entries] == [job.folder for job in jobs]
    assert [e["steered"] for e in entries] == [True, True, False, False]       # "a cup" has no relation
    assert [("verdict" in e) for e in entries] == [True, True, False, False]
    assert "image_unsteered.png" in names and (tmp_path / jobs[0].folder / "comparison.png").is_file()
    assert not (tmp_path / jobs[2].folder / "image_unsteered.png").exists()
    assert any("p01-s0000" in line for line in said)                           # why it is not steered
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["complete"] and index["images_planned"] == 4
    report = json.loads((tmp_path / jobs[0].folder / "report.json").read_text())
    assert report["model"] == "tiny" and report["batch"] == {"images": 3, "position": 0}
    assert open_image_run(tmp_path, jobs, settings, False).finished
    with pytest.raises(UsageError, match="other settings"):
        open_image_run(tmp_path, jobs, {"model": "other"}, False)
    with pytest.raises(UsageError, match="other prompts or seeds"):
        open_image_run(tmp_path, image_jobs(PROMPTS, [0]), settings, False)
    assert open_image_run(tmp_path, image_jobs(PROMPTS, [0]), settings, True).entries is None


@pytest.mark.parametrize("jobs, why", [
    ([], "other prompts or seeds (its index.json lists none it can name)"),
    ([[["a list"], 1, "p00-s0001"]], "other prompts or seeds (its index.json lists none it can name)"),
    ([["a cat", 3, "p00-s0003"]], "other prompts or seeds (its seeds are 3)"),
    ([["a dog", 1, "p00-s0001"]], "other prompts or seeds (its 1 prompt(s) begin with 'a dog')"),
    ([["a cat", 1, "p07-s0001"]], "other prompts or seeds (the same ones in another order or folders)"),
])
def test_a_run_of_other_images_is_named_by_what_differs(tmp_path, jobs, why):
    import json

    from l2s.evaluation.image_runs import image_jobs, resume_state

    (tmp_path / "index.json").write_text(json.dumps({"jobs": jobs, "settings": {}}))
    assert resume_state(tmp_path, {}, image_jobs(["a cat"], [1])).why_not == why


def test_replacing_an_earlier_image_removes_its_map_grids_and_nothing_of_the_users(tmp_path):
    from l2s.evaluation.image_runs import remove_earlier_outputs

    (tmp_path / "maps" / "sub").mkdir(parents=True)
    for name in ("image.png", "maps/step_00.png", "maps/step_01.png", "maps/sub/keep.txt", "extra.txt"):
        (tmp_path / name).write_text("x")
    remove_earlier_outputs(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["extra.txt", "maps/sub/keep.txt"]
    (tmp_path / "maps" / "sub" / "keep.txt").unlink()
    (tmp_path / "maps" / "sub").rmdir()
    (tmp_path / "maps" / "step_02.png").write_text("x")
    remove_earlier_outputs(tmp_path)
    assert not (tmp_path / "maps").exists()      # emptied of ours: the folder goes too


def test_replacing_an_earlier_image_says_this_run_replaces_its_outputs(tmp_path, caplog):
    from l2s.evaluation.image_runs import remove_earlier_outputs

    for name in ("image.png", "report.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    remove_earlier_outputs(tmp_path)
    # the previous run's outputs make way for this run's: no line reads as the user's files lost
    assert caplog.messages == [f"replacing the previous run's outputs in {tmp_path} (image.png, report.json)"]


@pytest.mark.parametrize("prompts, seeds, message", [
    ("a cat above a dog", [0], "prompts must be a non-empty list of strings"),
    ([], [0], "prompts must be a non-empty list"),
    (["a cat"], 3, "seeds must be a non-empty list of integers"),
    (["a cat"], [1, "2"], r"seeds must be an integer in \[0, 2\*\*64\), got '2'"),
    (["a cat"], [1, 1], "a seed is repeated"),
])
def test_image_jobs_refuses_what_would_make_other_images_than_asked(prompts, seeds, message):
    with pytest.raises(UsageError, match=message):
        image_jobs(prompts, seeds)


def test_a_judges_verdict_per_relation_and_a_prompt_it_can_never_judge_go_into_the_report():
    from l2s.evaluation import Verdict
    from l2s.evaluation.generation import verdicts

    relations = ({"subject": "a", "relation": "above", "object": "b", "holds": True, "reason": ""},
                 {"subject": "c", "relation": "left of", "object": "d", "holds": False, "reason": "found right of"})
    assert verdicts(lambda image, prompt: Verdict(image == "steered", relations), "p", "steered", "plain") == {
        "verdict": {"image": True, "image_unsteered": False},
        "relation_verdicts": {"image": list(relations), "image_unsteered": list(relations)}}
    never = Verdict(None, ({**relations[0], "holds": None, "reason": "one box"},), "one box")
    keys = verdicts(lambda image, prompt: never, "p", "steered", None)
    assert "verdict" not in keys and keys["no_verdict"] == "one box"      # not counted as wrong: no verdict
    assert keys["relation_verdicts"]["image"][0]["holds"] is None
    assert verdicts(lambda image, prompt: None, "p", "steered", "plain") == {}
    assert verdicts(lambda image, prompt: False, "p", "steered", None) == {"verdict": {"image": False}}


def test_a_full_disk_mid_image_leaves_no_half_png_and_names_the_file(tmp_path, full_disk):
    from PIL import Image

    from l2s.evaluation.generation import write_images

    image = Image.new("RGB", (8, 8), "red")
    full_disk("comparison.png.tmp")
    with pytest.raises(OSError) as failed:
        write_images(tmp_path, image, image, None)
    assert failed.value.filename == str(tmp_path / "comparison.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "image_unsteered.png"]


def test_one_images_report_holds_the_settings_that_made_it_and_the_commands_seconds(tmp_path):
    import time

    from l2s.evaluation.generation import write_image_report

    report = {"prompt": "a cat above a dog", "timings_s": {"total": 1.0}}
    assert write_image_report(tmp_path, report, {"steps": 2}, time.perf_counter() - 3) == "report.json"
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["settings"] == {"steps": 2} and written["timings_s"]["command_total"] >= 3
