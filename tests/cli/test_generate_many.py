"""``l2s generate`` with several prompts and seeds: one batched steering call per --batch-size images,
a folder per image equal to a single-image run, index.json, and every bad list refused first."""
import json

import numpy as np
import pytest
from PIL import Image

import l2s.cli.generate
from l2s.cli import main
from l2s.evaluation import geneval_metadata
from l2s.evaluation.prompt_files import spec_from_prompt
from l2s.files import KIND_FILE
from l2s.pipelines import SteeringPipeline
from tests.hub_cache import cached_tiny_flux

TINY = ["--model", "tiny", "--quiet"]
PROMPTS = ["a cat to the left of a dog", "a cup above a book"]


def run(argv, capsys):
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("l2s:")]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def iterations(report):
    return {step: len(records) for step, records in report["steps"].items()}


def visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def calls(monkeypatch):
    """(prompt, seed, steer) of every steering-pipeline call."""
    seen, original = [], SteeringPipeline.__call__

    def spy(self, prompt, **kwargs):
        seen.append((prompt, kwargs.get("seed"), kwargs.get("steer", True)))
        return original(self, prompt, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", spy)
    return seen


def test_prompts_times_seeds_equal_single_image_runs(tmp_path, capsys, calls):
    out = tmp_path / "many"
    code, lines = run(["generate", *PROMPTS, "--seeds", "0-1", "--batch-size", "3", "--out", str(out), *TINY], capsys)
    assert code == 0, lines
    folders = ["p00-s0000", "p00-s0001", "p01-s0000", "p01-s0001"]
    assert visible(out) == ["index.json", "overview_01.png", *folders]
    assert lines[-1].startswith("l2s: wrote 4 image folders p00-s0000/ to p01-s0001/ (image.png")
    assert lines[-1].endswith(f"index.json and overview_01.png in {out}")
    # one steering call per batch of 3, one unsteered call per batch for its steered images
    steered_calls = [(p, s) for p, s, steer in calls if steer]
    assert steered_calls == [(PROMPTS[:1] * 2 + PROMPTS[1:], [0, 1, 0]), (PROMPTS[1:], [1])]
    index = json.loads((out / "index.json").read_text())
    expected = [(p, s, f"p0{i}-s000{s}") for i, p in enumerate(PROMPTS) for s in (0, 1)]
    assert [(e["prompt"], e["seed"], e["folder"]) for e in index["images"]] == expected
    for prompt, seed, folder in expected:
        single = tmp_path / folder
        code, lines = run(["generate", prompt, "--seed", str(seed), "--out", str(single), *TINY], capsys)
        assert code == 0, lines
        assert visible(out / folder) == visible(single)
        for name in ("image.png", "image_unsteered.png"):
            difference = np.abs(pixels(out / folder / name) - pixels(single / name)).max()
            assert difference <= 1, (folder, name, difference)
        report, alone = (json.loads((f / "report.json").read_text()) for f in (out / folder, single))
        assert (report["prompt"], report["seed"], report["steered"]) == (prompt, seed, alone["steered"])
        assert iterations(report) == iterations(alone) and report["relations"] == alone["relations"]
        assert next(e for e in index["images"] if e["folder"] == folder)["steered"] == report["steered"]


def test_an_interrupted_run_lists_its_finished_images_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    original, seen, interrupt = SteeringPipeline.__call__, [], [True]

    def second_batch_fails(self, prompt, **kwargs):
        seen.append((prompt, kwargs.get("seed")))
        if len(seen) == 2 and interrupt:
            interrupt.clear()
            raise KeyboardInterrupt
        return original(self, prompt, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", second_batch_fails)
    out = tmp_path / "o"
    argv = ["generate", *PROMPTS, "--seeds", "0-1", "--batch-size", "2", "--steps", "1", "--no-steer",
            "--out", str(out), *TINY]
    code, lines = run(argv, capsys)
    assert code == 130 and lines[-1] == "l2s: interrupted; rerun the same command to resume"
    index = json.loads((out / "index.json").read_text())
    assert not index["complete"] and index["images_planned"] == 4
    assert [e["folder"] for e in index["images"]] == ["p00-s0000", "p00-s0001"]
    assert visible(out) == ["index.json", "p00-s0000", "p00-s0001"]
    first = (out / "p00-s0000" / "image.png").stat().st_mtime_ns
    code, lines = run(argv + ["--batch-size", "4"], capsys)   # the batch size does not change an image
    assert code == 0 and f"l2s: resuming: 2 of 4 images already in {out}" in lines, lines
    assert lines[-1].startswith("l2s: wrote 2 of the 4 image folders (2 were there already) p00-s0000/ to p01-s0001/")
    assert seen[2:] == [(PROMPTS[1:] * 2, [0, 1])]             # only the two missing images
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and [e["folder"] for e in index["images"]] == [
        "p00-s0000", "p00-s0001", "p01-s0000", "p01-s0001"]
    assert (out / "p00-s0000" / "image.png").stat().st_mtime_ns == first
    # a model that fails to load removes nothing; a finished run is left as it is unless --restart
    code, lines = run(argv + ["--classifier", str(tmp_path / "missing"), "--restart"], capsys)
    assert code == 2 and visible(out) == ["index.json", "overview_01.png", "p00-s0000", "p00-s0001", "p01-s0000",
                                          "p01-s0001"]
    seen.clear()
    code, lines = run(argv, capsys)
    assert code == 0 and lines[-1] == (f"l2s: all 4 images are already in {out} (same prompts, seeds and settings); "
                                       "--restart makes them again") and not seen
    assert (out / "p00-s0000" / "image.png").stat().st_mtime_ns == first
    code, lines = run(argv + ["--restart"], capsys)
    assert code == 0 and not any("resuming" in line for line in lines) and len(seen) == 2


def test_a_run_of_several_images_shows_them_all_in_overview_pages(tmp_path, capsys, monkeypatch):
    """Eight folders of images were eight folders to open: the overview shows every image (its
    comparison where steered) with its folder and prompt; a smaller rerun leaves no old page."""
    import l2s.evaluation.generation as generation

    monkeypatch.setattr(generation, "OVERVIEW_PAGE", 3)
    out = tmp_path / "o"
    argv = ["generate", *PROMPTS, "--seeds", "0-1", "--steps", "1", "--out", str(out), *TINY]
    code, lines = run(argv, capsys)
    assert code == 0 and lines[-1].endswith(f"index.json, overview_01.png and overview_02.png in {out}"), lines
    last = json.loads((out / "index.json").read_text())["images"][-1]
    assert last["folder"] == "p01-s0001" and last["steered"]
    with Image.open(out / "overview_01.png") as first, Image.open(out / "overview_02.png") as second, \
            Image.open(out / "p01-s0001" / "comparison.png") as comparison:
        assert first.width == 3 * second.width          # 3 tiles in a row, then the fourth alone
        # the fourth tile is its comparison (unsteered | steered), 160 px high, framed and captioned
        assert second.size == (round(comparison.width * 160 / comparison.height) + 8, 160 + 8 + 2 * 12 + 4)
    code, lines = run(argv[:4] + ["0"] + argv[5:] + ["--restart"], capsys)
    assert code == 0 and [p.name for p in out.glob("overview_*.png")] == ["overview_01.png"]


def test_an_image_removed_by_hand_is_a_grey_tile_not_a_failed_overview(tmp_path, capsys):
    from l2s.evaluation.generation import write_overview

    out = tmp_path / "o"
    argv = ["generate", *PROMPTS, "--seeds", "0", "--steps", "1", "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 0
    for name in ("image.png", "comparison.png"):
        (out / "p00-s0000" / name).unlink(missing_ok=True)
    entries = json.loads((out / "index.json").read_text())["images"]
    assert write_overview(out, entries) == ["overview_01.png"]
    with Image.open(out / "overview_01.png") as page:
        assert page.width > 0


def test_an_earlier_run_of_other_settings_or_images_is_replaced_only_with_restart(tmp_path, capsys, monkeypatch):
    original, seen = SteeringPipeline.__call__, []

    def first_batch_only(self, prompt, **kwargs):
        seen.append(prompt)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(self, prompt, **kwargs)

    monkeypatch.setattr(SteeringPipeline, "__call__", first_batch_only)
    out = tmp_path / "o"
    argv = ["generate", *PROMPTS, "--seeds", "0-1", "--batch-size", "2", "--no-steer", "--out", str(out), *TINY]
    assert run(argv + ["--steps", "1"], capsys)[0] == 130
    monkeypatch.setattr(SteeringPipeline, "__call__", original)
    code, lines = run(argv + ["--steps", "2"], capsys)
    assert code == 2 and lines[-1] == (f"l2s: error: {out} holds an earlier run with other settings (steps: 1 -> 2); "
                                       "use another --out, or --restart to replace it")
    assert json.loads((out / "index.json").read_text())["settings"]["steps"] == 1     # nothing removed
    code, lines = run(argv + ["--steps", "2", "--restart"], capsys)
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["settings"]["steps"] == 2 and len(index["images"]) == 4
    # a finished run of other seeds, and one image, are refused too: nothing of an earlier run is lost
    code, lines = run([*argv[:4], "0", *argv[5:], "--steps", "2"], capsys)
    assert code == 2 and "holds an earlier run with other prompts or seeds (its seeds are 0, 1)" in lines[-1]
    code, lines = run(["generate", PROMPTS[0], "--no-steer", "--out", str(out), *TINY], capsys)
    assert code == 2 and ("holds an earlier run of several images (index.json, overview_01.png, p00-s0000/, ... "
                          "4 image folders)") in lines[-1]
    assert len(json.loads((out / "index.json").read_text())["images"]) == 4


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(l2s.cli.generate, "load_steerer", lambda args: pytest.fail("loaded a model"))


@pytest.mark.parametrize("options, message", [
    (["--seeds=-1"], "bad --seeds '-1': use non-negative integers"),
    (["--seeds", "0-x"], "bad --seeds '0-x'"),
    (["--seeds", ""], "bad --seeds ''"),
    (["--seeds", "3-1"], "bad --seeds range '3-1': the end is before the start"),
    (["--seeds", "1,4,1"], "a seed is repeated"),
    (["--seeds", "0-3,2"], "a seed is repeated"),
    (["--seeds", f"0,{2 ** 64}"], "seeds must be below 2**64"),
    (["--seeds", "0-1", "--seed", "3"], "give --seed N or --seeds LIST, not both"),
    (["--seeds", "0-1", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--seeds", "0-1", "--save-maps"], "--save-maps writes one image's maps"),
    (["--prompts", "/nonexistent/prompts.txt"], "--prompts /nonexistent/prompts.txt: cannot read it"),
])
def test_bad_lists_fail_with_one_line_before_any_work(options, message, no_model, tmp_path, capsys):
    code, lines = run(["generate", *PROMPTS, "--out", str(tmp_path / "o"), *TINY, *options], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("l2s: error: ") and message in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_bad_prompts_and_prompt_files_fail_with_one_line(no_model, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("a caf\xe9 left of a dog\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "bad.txt").write_text("a cat above a dog\n\nleft of a dog\n")
    (tmp_path / "meta.jsonl").write_text('{"prompt": "a cat above a dog"}\n')
    for argv, message in [
        (["--prompts", str(tmp_path / "latin1.txt")], "not UTF-8 text"),
        (["--prompts", str(tmp_path / "bad.txt")], f"{tmp_path / 'bad.txt'}:3 ('left of a dog'): "),
        (["--prompts", str(tmp_path / "meta.jsonl")], "generate reads one prompt a line (plain text)"),
        (["--prompts", str(tmp_path / "blank.txt")], "has no non-blank line"),
        ([], "no prompt: give PROMPT (one or more) or --prompts FILE"),
        ([PROMPTS[0], "left of a dog"], "prompt 1 ('left of a dog'): "),
        ([*PROMPTS, "--relations", "cat,left of,dog"], "prompt 1 ('a cup above a book'): "),
    ]:
        code, lines = run(["generate", *argv, "--out", str(tmp_path / "o"), *TINY], capsys)
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, lines)
    assert not (tmp_path / "o").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path, capsys):
    from l2s.cli.batches import numbered_prompt_lines

    (tmp_path / "bom.txt").write_bytes("\ufeffa cat left of a dog\na cup above a book\n".encode("utf-8"))
    assert numbered_prompt_lines(str(tmp_path / "bom.txt")) == [(1, "a cat left of a dog"), (2, "a cup above a book")]


def test_prompts_dash_reads_standard_input(monkeypatch):
    import io
    import types

    from l2s.cli.batches import numbered_prompt_lines

    data = "a cat left of a dog\n\n  a cup above a book\n".encode("utf-8")
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))   # as 'l2s parse -' reads
    assert numbered_prompt_lines("-") == [(1, "a cat left of a dog"), (3, "a cup above a book")]

def test_prompt_file_order_warnings_per_image_and_reruns(tmp_path, capsys, calls):
    (tmp_path / "prompts.txt").write_text("\na cat next to a dog\n\n  a cup above a book  \n", encoding="utf-8")
    out = tmp_path / "o"
    code, lines = run(["generate", PROMPTS[0], "--prompts", str(tmp_path / "prompts.txt"), "--seeds", "3,10",
                       "--steps", "1", "--no-steer", "--out", str(out), *TINY], capsys)
    assert code == 0, lines
    index = json.loads((out / "index.json").read_text())["images"]
    assert [(e["prompt"], e["seed"], e["folder"]) for e in index] == [
        (PROMPTS[0], 3, "p00-s0003"), (PROMPTS[0], 10, "p00-s0010"), ("a cat next to a dog", 3, "p01-s0003"),
        ("a cat next to a dog", 10, "p01-s0010"), (PROMPTS[1], 3, "p02-s0003"), (PROMPTS[1], 10, "p02-s0010")]
    assert len(calls) == 1 and not any(e["steered"] for e in index)      # --no-steer: one call, no baseline
    assert not [line for line in lines if "unsteered" in line]      # --no-steer: no steering to miss
    code, lines = run(["generate", "--prompts", str(tmp_path / "prompts.txt"), "--seeds", "3,10", "--steps", "1",
                       "--no-baseline", "--out", str(tmp_path / "steered"), *TINY], capsys)
    said = [line for line in lines if "unsteered" in line]                # the prompt without a direction
    assert code == 0 and [line.split(":")[1:3] for line in said] == [[" warning", " p00-s0003"],
                                                                      [" warning", " p00-s0010"]], lines
    assert visible(out / "p01-s0003") == ["image.png", "report.json"]
    # a single-image run into the folder replaces the earlier run only with --restart, then has today's layout
    single = ["generate", PROMPTS[0], "--seeds", "5", "--steps", "1", "--no-steer", "--out", str(out), *TINY]
    assert run(single, capsys)[0] == 2 and (out / "index.json").is_file()
    code, lines = run(single + ["--restart"], capsys)
    assert code == 0 and visible(out) == ["image.png", "report.json"]
    assert json.loads((out / "report.json").read_text())["seed"] == 5


def test_a_damaged_index_is_named_when_the_run_starts_over(tmp_path):
    from l2s.evaluation.image_runs import resume_state

    assert resume_state(tmp_path, {}, []).why_not is None          # no index: a new run, nothing to say
    (tmp_path / "index.json").write_text('{"complete": fal')      # torn by a kill mid-write
    assert resume_state(tmp_path, {}, []).why_not == "an index.json that cannot be read"
    (tmp_path / "index.json").write_text("[1, 2]")
    assert resume_state(tmp_path, {}, []).why_not == "an index.json that is not a JSON object"


def test_a_run_killed_in_its_first_batch_resumes(tmp_path, capsys, monkeypatch):
    original = SteeringPipeline.__call__

    def killed(self, prompt, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SteeringPipeline, "__call__", killed)
    out = tmp_path / "o"
    argv = ["generate", *PROMPTS, "--seeds", "0-1", "--steps", "1", "--no-steer", "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 130
    index = json.loads((out / "index.json").read_text())      # written before the first batch
    assert not index["complete"] and index["images"] == [] and index["images_planned"] == 4
    monkeypatch.setattr(SteeringPipeline, "__call__", original)
    code, lines = run(argv, capsys)
    assert code == 0 and json.loads((out / "index.json").read_text())["complete"], lines


def test_a_classifier_retrained_at_the_same_path_does_not_resume_the_earlier_images(tmp_path, capsys):
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

    folder = tmp_path / "classifier"
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0).save(folder)
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "2", "--no-baseline", "--classifier", str(folder),
            "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 0
    assert "already in" in run(argv, capsys)[1][-1]                        # the same weights: nothing to do
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=1).save(folder)   # retrained into the same folder
    code, lines = run(argv, capsys)
    assert code == 2 and "holds an earlier run with other settings (classifier_digest: " in lines[-1], lines
    assert run(argv + ["--restart"], capsys)[0] == 0


def test_generate_and_eval_never_share_a_folder(tmp_path, capsys, monkeypatch):
    import l2s.cli.evaluate
    import l2s.cli.generate

    for module in (l2s.cli.evaluate, l2s.cli.generate):
        monkeypatch.setattr(module, "load_steerer", lambda *a, **k: pytest.fail("loaded a model"))
    made = tmp_path / "made"
    (made / "p00-s0000").mkdir(parents=True)
    (made / "index.json").write_text("{}")
    (made / KIND_FILE).write_text("generate\n")
    code, lines = run(["eval", "--out", str(made), "--restart", *TINY], capsys)
    assert code == 2 and lines[-1] == (f"l2s: error: {made} holds images of 'l2s generate' (index.json, "
                                       "p00-s0000/); use another --out")
    evaluated = tmp_path / "evaluated"
    evaluated.mkdir()
    (evaluated / "run.json").write_text("{}")
    (evaluated / KIND_FILE).write_text("eval\n")
    for argv in ([PROMPTS[0]], [*PROMPTS, "--seeds", "0-1"]):     # one image, and several
        code, lines = run(["generate", *argv, "--restart", "--out", str(evaluated), *TINY], capsys)
        assert code == 2 and lines[-1] == (f"l2s: error: {evaluated} holds an evaluation run ('l2s eval'); this run "
                                           "writes images of 'l2s generate': use another --out")
    images = tmp_path / "images" / "00000"            # a GenEval layout: its folder is read before --out
    (images / "samples").mkdir(parents=True)
    spec = spec_from_prompt("a red circle left of a blue square")
    (images / "metadata.jsonl").write_text(json.dumps(geneval_metadata(spec)) + "\n")
    Image.new("RGB", (32, 32)).save(images / "samples" / "0000.png")
    code, lines = run(["eval", "--images", str(tmp_path / "images"), "--out", str(evaluated), "--quiet"], capsys)
    assert code == 2 and "holds an 'l2s eval' run that generated its images (run.json)" in lines[-1]
    assert sorted(p.name for p in evaluated.iterdir() if not p.name.startswith(".")) == ["run.json"]
    from l2s.errors import L2SError
    from l2s.evaluation.run_dir import prepare_run_dir

    with pytest.raises(L2SError, match="holds images of 'l2s generate'"):   # the library's eval too
        prepare_run_dir(made, [], [], {}, restart=True, seeds=[])
    assert (made / "index.json").is_file()


def test_a_prompt_longer_than_the_shapes_window_fails_before_the_folder_is_touched(tmp_path, capsys):
    long = "a red circle left of a blue square " + "and a green triangle " * 8
    out = tmp_path / "o"
    code, lines = run(["generate", "a red circle left of a blue square", long, "--steps", "1", "--out", str(out),
                       "--quiet"], capsys)
    errors = [line for line in lines if line.startswith("l2s: error:")]
    assert code == 2 and len(errors) == 1, lines
    assert errors[0].startswith(f"l2s: error: prompt 1 ({long!r}): the prompt needs ")
    assert errors[0].endswith("T5 tokens; the shapes model reads at most 32")
    assert not out.exists()          # no index of a run that never started, so the corrected rerun is not refused


def test_a_later_prompt_the_classifier_cannot_steer_fails_before_any_image_naming_it(tmp_path, capsys):
    diagonal = "a red circle to the top-left of a blue square"     # the shapes classifier has 4 directions
    out = tmp_path / "o"
    code, lines = run(["generate", "a red circle left of a blue square", diagonal, "--batch-size", "1",
                       "--steps", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and lines[-1].startswith(f"l2s: error: prompt 1 ({diagonal!r}): relation 'top-left of' is not "
                                              "a class of this classifier"), lines
    assert not out.exists()          # no image made, and the corrected rerun is not refused

def test_several_images_show_one_bar_over_the_images(tmp_path, capsys):
    out = tmp_path / "many"
    assert main(["generate", PROMPTS[0], "--seeds", "0-2", "--batch-size", "2", "--model", "tiny",
                 "--no-baseline", "--out", str(out)]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "l2s generate: 100%" in err and "3/3" in err, err
    assert main(["generate", PROMPTS[0], "--seeds", "0-3", "--model", "tiny", "--no-baseline",
                 "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "l2s generate" not in capsys.readouterr().err   # --quiet: none


def test_another_spelling_of_the_same_classifier_path_resumes_and_older_records_do_too(tmp_path, capsys,
                                                                                        monkeypatch):
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0).save(tmp_path / "classifier")
    (tmp_path / "link").symlink_to(tmp_path / "classifier")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "1", "--no-baseline", "--out", str(out), *TINY]
    assert run(argv + ["--classifier", "classifier"], capsys)[0] == 0
    assert json.loads((out / "index.json").read_text())["settings"]["classifier"] == str(tmp_path / "classifier")
    done = f"l2s: all 2 images are already in {out}"
    for spelling in ("./classifier/", str(tmp_path / "classifier"), "link"):
        assert run(argv + ["--classifier", spelling], capsys)[1][-1].startswith(done), spelling
    index = json.loads((out / "index.json").read_text())      # recorded as typed, before paths were resolved
    index["settings"]["classifier"] = "classifier"
    (out / "index.json").write_text(json.dumps(index))
    assert run(argv + ["--classifier", str(tmp_path / "classifier")], capsys)[1][-1].startswith(done)


def test_naming_a_default_or_other_threads_still_resumes_and_older_records_do_too(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "1", "--no-steer", "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 0
    done = f"l2s: all 2 images are already in {out}"
    same = ["--device", "cpu", "--capture-backend", "sdpa", "--threads", "1"]
    assert run(argv + same, capsys)[1][-1].startswith(done)
    # An index.json written before defaults were resolved (device and capture backend unset, threads kept)
    # and before --execution existed.
    index = json.loads((out / "index.json").read_text())
    index["settings"].update(device=None, capture_backend=None, threads=2)
    del index["settings"]["execution"]
    (out / "index.json").write_text(json.dumps(index))
    assert run(argv, capsys)[1][-1].startswith(done)
    code, lines = run(argv + ["--capture-backend", "native"], capsys)
    assert code == 2 and "(capture_backend: sdpa -> native)" in lines[-1], lines


def test_a_reference_run_records_no_capture_backend_and_older_records_still_resume(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "1", "--no-baseline", "--execution", "reference",
            "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 0
    index = json.loads((out / "index.json").read_text())
    assert index["settings"]["capture_backend"] is None
    assert all(json.loads((out / f / "report.json").read_text())["execution"]["capture_backend"] is None
               for f in ("p00-s0000", "p00-s0001"))
    done = f"l2s: all 2 images are already in {out}"
    assert run(argv + ["--capture-backend", "sdpa"], capsys)[1][-1].startswith(done)
    index["settings"]["capture_backend"] = "sdpa"            # as recorded before: the backend it never ran
    (out / "index.json").write_text(json.dumps(index))
    assert run(argv, capsys)[1][-1].startswith(done)


def test_the_dtype_is_recorded_resolved_and_auto_resumes_what_it_stands_for(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "1", "--no-steer", "--out", str(out), *TINY]
    assert run(argv, capsys)[0] == 0
    index = json.loads((out / "index.json").read_text())
    assert index["settings"]["dtype"] == "fp32"          # what loaded, not "auto"
    done = f"l2s: all 2 images are already in {out}"
    assert run(argv + ["--dtype", "fp32"], capsys)[1][-1].startswith(done)   # the same weights
    index["settings"]["dtype"] = "auto"                    # as recorded before dtypes were resolved
    (out / "index.json").write_text(json.dumps(index))
    assert run(argv, capsys)[1][-1].startswith(done)
    assert run(argv + ["--dtype", "fp32"], capsys)[1][-1].startswith(done)


def test_a_hub_id_and_its_snapshot_folder_are_one_model(hub_cache, tmp_path, capsys):
    snapshot_dir = cached_tiny_flux(hub_cache, tmp_path / "classifier")
    out = tmp_path / "o"
    argv = ["generate", PROMPTS[0], "--seeds", "0-1", "--steps", "1", "--no-steer", "--quiet", "--out", str(out),
            "--classifier", str(tmp_path / "classifier"), "--model"]
    assert run(argv + ["someone/tiny-flux"], capsys)[0] == 0
    snapshot = str(snapshot_dir.resolve())
    assert json.loads((out / "index.json").read_text())["settings"]["model"] == snapshot   # what loaded
    done = f"l2s: all 2 images are already in {out}"
    assert run(argv + [snapshot], capsys)[1][-1].startswith(done)
    index = json.loads((out / "index.json").read_text())      # recorded as typed, before hub ids were resolved
    index["settings"]["model"] = "someone/tiny-flux"
    (out / "index.json").write_text(json.dumps(index))
    assert run(argv + [snapshot], capsys)[1][-1].startswith(done)


def test_the_shipped_classifier_named_or_left_out_is_one_setting_as_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "o"     # the shipped shapes-world model: its default classifier is the shipped "shapes"
    argv = ["generate", "a red circle to the left of a blue square", "--seeds", "0-1", "--steps", "1", "--no-baseline",
            "--quiet", "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    assert json.loads((out / "index.json").read_text())["settings"]["classifier"] is None
    done = f"l2s: all 2 images are already in {out}"
    assert run(argv + ["--classifier", "shapes"], capsys)[1][-1].startswith(done)   # not "classifier: None -> shapes"


def test_the_last_line_names_what_only_some_folders_hold(tmp_path, capsys):
    """An unsteered prompt's folder holds no comparison: the line does not claim every folder has one."""
    out = tmp_path / "mixed"
    code, lines = run(["generate", PROMPTS[0], "a blue square", "--seeds", "0", "--out", str(out), *TINY], capsys)
    assert code == 0, lines
    assert sorted(p.name for p in (out / "p01-s0000").iterdir()) == ["image.png", "report.json"]
    assert lines[-1] == (f"l2s: wrote 2 image folders p00-s0000/ to p01-s0000/ (image.png, report.json; "
                         f"image_unsteered.png, comparison.png, probability.png in 1 of them), index.json and "
                         f"overview_01.png in {out}")


def test_a_run_whose_images_all_lack_a_verdict_counts_none_as_judged():
    from l2s.cli.generate import _verdict_line

    entries = [{"folder": f"p00-s000{seed}", "no_verdict": "one box for both"} for seed in range(2)]
    assert _verdict_line(entries) == ("l2s: shapes detector, GenEval rule: none of the 2 images has a verdict "
                                      "(one box for both)")
    assert _verdict_line(entries[:1]) == ("l2s: shapes detector, GenEval rule: no image has a verdict "
                                          "(one box for both)")   # not 'none of the 1 images'
