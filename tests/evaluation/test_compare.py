"""Two evaluation runs compared image for image, on hand-written run folders."""
import json
import math

import pytest

from l2s.errors import L2SError
from l2s.evaluation.compare import REPORT_START, compare_runs, read_eval_run

PROMPTS = ("a red circle left of a blue square", "a green square above a red circle")


def write_run(folder, verdicts, settings=None):
    """A finished run's summary.json and results.jsonl: ``verdicts`` maps (mode, prompt index, seed)
    to whether that image is correct (mode ``images``: a scored folder's, by its prompt folder)."""
    folder.mkdir(parents=True)
    settings = {"model": "tiny", "classifier": None, "rule": "geneval", "detector": "shapes", **(settings or {})}
    (folder / "summary.json").write_text(json.dumps({"settings": settings, "modes": {}}))
    lines = [{"prompt": PROMPTS[index % 2], "correct": correct,
              "meta": {"mode": mode, "seed": seed, **({"folder": f"{index:05d}"} if mode == "images" else
                                                      {"prompt_index": index})}}
             for (mode, index, seed), correct in verdicts.items()]
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def _binomial_two_sided(k, n):
    """The exact two-sided sign test, independently of scipy: twice the smaller tail, at most 1."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_runs_pair_by_prompt_seed_and_mode_and_report_each_mode(tmp_path):
    seeds = range(10)
    # steered: A right on every seed, B on seeds 0-1 only -> 8 pairs only A got right; base: alike
    base = {("base", 0, s): s < 3 for s in seeds}
    a = write_run(tmp_path / "a", {**{("steered", 0, s): True for s in seeds}, **base})
    b = write_run(tmp_path / "b", {**{("steered", 0, s): s < 2 for s in seeds}, **base},
                  settings={"classifier": "/models/mine"})
    comparison = compare_runs(read_eval_run(a), read_eval_run(b))
    steered, base = {m.mode: m for m in comparison.modes}["steered"], {m.mode: m for m in comparison.modes}["base"]
    assert [m.mode for m in comparison.modes] == ["base", "steered"]
    c = steered.paired
    assert (c.n_pairs, c.a_correct, c.b_correct, c.a_only, c.b_only) == (10, 10, 2, 8, 0)
    assert c.p_value == pytest.approx(_binomial_two_sided(8, 8))        # 2 / 256
    assert base.paired.a_only == base.paired.b_only == 0 and base.paired.p_value == 1.0
    text = comparison.markdown()
    assert text.startswith(REPORT_START)
    assert f"| steered | 10 | 10/10 = 1.000 | 2/10 = 0.200 | +0.800 | 8 | 0 | {c.p_value:.3g} |" in text
    assert "| base | 10 | 3/10 = 0.300 | 3/10 = 0.300 | +0.000 | 0 | 0 | 1 |" in text
    assert "settings that differ (A -> B): classifier: unset -> '/models/mine'" in text
    assert "Unpaired" not in text


def test_only_images_both_runs_hold_are_paired_and_the_rest_is_said(tmp_path):
    a = write_run(tmp_path / "a", {("steered", i, s): True for i in range(2) for s in range(4)})
    b = write_run(tmp_path / "b", {("steered", i, s): False for i in range(2) for s in range(2)}
                  | {("base", 0, 0): True})                          # base: A has none, so no base row
    comparison = compare_runs(read_eval_run(a), read_eval_run(b))
    (steered,) = comparison.modes
    assert (steered.mode, steered.paired.n_pairs, steered.a_images, steered.b_images) == ("steered", 4, 8, 4)
    assert "Unpaired steered images: A 4 of 8, B 0 of 4." in comparison.markdown()


def test_a_prompt_a_file_repeats_is_paired_occurrence_by_occurrence(tmp_path):
    # prompts 0 and 2 are the same text: A right on its first occurrence, B on its second
    a = write_run(tmp_path / "a", {("steered", 0, 0): True, ("steered", 2, 0): False})
    b = write_run(tmp_path / "b", {("steered", 0, 0): False, ("steered", 2, 0): True})
    c = compare_runs(read_eval_run(a), read_eval_run(b)).modes[0].paired
    assert (c.n_pairs, c.a_only, c.b_only) == (2, 1, 1)


@pytest.mark.parametrize("setting, said", [({"rule": "t2i_compbench"}, "rule 'geneval' vs 't2i_compbench'"),
                                           ({"detector": "/models/owlv2 (threshold 0.3)"},
                                            "detector 'shapes' vs '/models/owlv2 (threshold 0.3)'")])
def test_runs_scored_differently_are_refused(tmp_path, setting, said):
    a = write_run(tmp_path / "a", {("steered", 0, 0): True})
    b = write_run(tmp_path / "b", {("steered", 0, 0): True}, settings=setting)
    with pytest.raises(L2SError) as refused:
        compare_runs(read_eval_run(a), read_eval_run(b))
    assert f"were scored differently ({said}): their verdicts do not compare" in str(refused.value)


def test_runs_sharing_no_image_are_refused(tmp_path):
    a = write_run(tmp_path / "a", {("steered", 0, 0): True, ("base", 0, 0): True})
    b = write_run(tmp_path / "b", {("steered", 0, 1): True, ("base", 1, 0): True})   # another seed, prompt
    with pytest.raises(L2SError, match="share no image \\(the same prompt, seed and mode\\): nothing to pair"):
        compare_runs(read_eval_run(a), read_eval_run(b))


def test_a_folder_that_is_no_finished_run_is_refused(tmp_path):
    with pytest.raises(L2SError, match="no such folder"):
        read_eval_run(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")
    with pytest.raises(L2SError, match="holds no finished 'l2s eval' run \\(no summary.json or results.jsonl\\)"):
        read_eval_run(tmp_path / "half")
    run = write_run(tmp_path / "run", {("steered", 0, 0): True})
    (run / "results.jsonl").write_text('{"prompt": "x", "correct": true, "meta": {"seed": 0}}\n')
    with pytest.raises(L2SError, match="results.jsonl: not the records of an 'l2s eval' run"):
        read_eval_run(run)
    (run / "results.jsonl").write_text("{not json\n")
    with pytest.raises(L2SError, match="results.jsonl"):
        read_eval_run(run)


def test_settings_another_l2s_version_spelled_otherwise_are_not_listed_as_differences(hub_cache, tmp_path):
    snapshot = hub_cache / "models--someone--flux" / "snapshots" / "89abcdef0123456789abcdef0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (hub_cache / "models--someone--flux" / "refs").mkdir()
    (hub_cache / "models--someone--flux" / "refs" / "main").write_text(snapshot.name)
    # as an older version recorded them: unresolved dtype, a reference run's backend, the hub id as typed
    old = {"model": "someone/flux", "dtype": "auto", "execution": "reference", "capture_backend": "sdpa",
           "steps": 4}
    new = {"model": str(snapshot.resolve()), "dtype": "fp32", "execution": "reference", "capture_backend": None,
           "steps": 4}
    runs = [write_run(tmp_path / name, {("steered", 0, 0): True}, settings=settings)
            for name, settings in (("old", old), ("new", new), ("unset", {**old, "dtype": None}))]
    for earlier in runs[0], runs[2]:
        assert compare_runs(read_eval_run(earlier), read_eval_run(runs[1])).differing_settings() == "none"
    other = write_run(tmp_path / "other", {("steered", 0, 0): True},
                      settings={**new, "steps": 8, "classifier": "/models/mine", "dtype": "bf16"})
    assert compare_runs(read_eval_run(runs[1]), read_eval_run(other)).differing_settings() == \
        "classifier: unset -> '/models/mine', dtype: 'fp32' -> 'bf16', steps: 4 -> 8"


def test_a_scored_folders_images_pair_with_a_generated_runs_mode_given_by_modes(tmp_path):
    scored = write_run(tmp_path / "scored", {("images", i, s): i == 0 for i in range(2) for s in range(2)},
                       settings={"images": "/runs/geneval/steered"})
    made = write_run(tmp_path / "made", {(mode, i, s): mode == "steered" for mode in ("base", "steered")
                                         for i in range(2) for s in range(2)})
    a, b = read_eval_run(scored), read_eval_run(made)
    with pytest.raises(L2SError, match="A holds the modes images, B base, steered: pair one of each with --modes"):
        compare_runs(a, b)                                           # the default: no mode in common
    comparison = compare_runs(a, b, modes=("images", "steered"))
    (pair,) = comparison.modes
    assert (pair.label, pair.paired.n_pairs, pair.paired.a_correct, pair.paired.b_only) == ("images=steered", 4, 2, 2)
    assert "| images=steered | 4 | 2/4 = 0.500 | 4/4 = 1.000 |" in comparison.markdown()
    assert "the same prompt and seed (A's images with B's steered)" in comparison.markdown()
    for modes in (("images", "stered"), ("steered", "images")):
        with pytest.raises(L2SError) as refused:
            compare_runs(a, b, modes=modes)
        assert f"A ({scored}) holds the modes images, B ({made}) base, steered" in str(refused.value)


def _scored_run(folder, verdicts, images):
    """A finished ``l2s eval --images`` run, its settings as that run records them: no generation setting."""
    write_run(folder, verdicts)
    settings = {"images": images, "folders_without_position": 0, "folders_without_images": [], "rule": "geneval",
                "detector": "shapes"}
    (folder / "summary.json").write_text(json.dumps({"settings": settings, "modes": {}}))
    return folder


def test_a_scored_folder_differs_only_in_what_both_runs_hold_and_the_generated_runs_settings_are_context(tmp_path):
    scored = _scored_run(tmp_path / "scored", {("images", 0, 0): True}, "/runs/geneval/steered")
    made = write_run(tmp_path / "made", {("steered", 0, 0): True},
                     settings={"model": "/models/flux", "steps": 4, "sampling": {"true_cfg_scale": 2.0}})
    comparison = compare_runs(read_eval_run(scored), read_eval_run(made), modes=("images", "steered"))
    assert comparison.differing_settings() == "none"        # the scored run generated nothing: nothing differs
    text = comparison.markdown()
    assert "- A scored the images in /runs/geneval/steered\n" in text
    assert ("- B generated its images with: classifier: unset, model: '/models/flux', sampling: "
            "{'true_cfg_scale': 2.0}, steps: 4\n") in text
    reverse = compare_runs(read_eval_run(made), read_eval_run(scored), modes=("steered", "images"))
    assert reverse.differing_settings() == "none" and "- A generated its images with: " in reverse.markdown()
    other = _scored_run(tmp_path / "other", {("images", 0, 0): True}, "/runs/mine/steered")
    assert compare_runs(read_eval_run(scored), read_eval_run(other)).differing_settings() == \
        "images: '/runs/geneval/steered' -> '/runs/mine/steered'"          # what both hold still compares
    assert "generated its images" not in compare_runs(read_eval_run(made), read_eval_run(made)).markdown()


def test_pairs_without_a_verdict_on_either_side_are_skipped_and_counted(tmp_path):
    # prompt 1 has no verdict in A, seed 1 of prompt 0 none in B: 3 of the 4 steered pairs are skipped
    a = write_run(tmp_path / "a", {("steered", 0, 0): True, ("steered", 0, 1): True,
                                   ("steered", 1, 0): None, ("steered", 1, 1): None})
    b = write_run(tmp_path / "b", {("steered", 0, 0): False, ("steered", 0, 1): None,
                                   ("steered", 1, 0): True, ("steered", 1, 1): False})
    (steered,) = compare_runs(read_eval_run(a), read_eval_run(b)).modes
    assert (steered.paired.n_pairs, steered.paired.a_only, steered.no_verdict) == (1, 1, 3)
    text = compare_runs(read_eval_run(a), read_eval_run(b)).markdown()
    assert "| steered | 1 | 1/1 = 1.000 | 0/1 = 0.000 |" in text
    assert ("Skipped steered pairs without a verdict on either side (prompts the detector can never judge): "
            "3 of 4.") in text.splitlines() and "Unpaired" not in text
    none = write_run(tmp_path / "none", {("steered", 1, 0): None})
    with pytest.raises(L2SError, match="none of the 1 images they share has a verdict on both sides"):
        compare_runs(read_eval_run(a), read_eval_run(none))


def test_a_record_written_before_such_images_had_no_verdict_is_skipped_too(tmp_path):
    # an earlier l2s wrote "correct": false for a relation between one label twice
    twin = {"subject": "red circle", "relation": "left of", "object": "red circle", "holds": False, "found": [],
            "position_score": None, "reason": "cannot be judged"}
    old, new = (write_run(tmp_path / name, {("steered", 0, 0): True, ("steered", 1, 0): verdict})
                for name, verdict in (("old", False), ("new", None)))
    lines = [json.loads(line) for line in (old / "results.jsonl").read_text().splitlines()]
    lines[1]["checks"] = [twin]
    (old / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (steered,) = compare_runs(read_eval_run(old), read_eval_run(old)).modes
    assert (steered.paired.n_pairs, steered.no_verdict) == (1, 1)
    assert compare_runs(read_eval_run(old), read_eval_run(new)).modes[0].no_verdict == 1
