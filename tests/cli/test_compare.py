"""``l2s compare`` on two real ``l2s eval`` runs of the tiny model: another classifier, the same prompts and seeds."""
import json
import shutil

import pytest

from l2s.cli import main
from l2s.evaluation.compare import REPORT_START

from .test_evaluate import TINY_RUN, error_lines, run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tiny model's eval with its random classifier (A) and with another one saved to a folder (B)."""
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline

    folder = tmp_path_factory.mktemp("compare")
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=1).save(folder / "classifier")
    assert main(TINY_RUN + ["--out", str(folder / "a")]) == 0
    assert main(TINY_RUN + ["--classifier", str(folder / "classifier"), "--out", str(folder / "b")]) == 0
    return folder


def _verdicts(run_folder, mode):
    lines = [json.loads(line) for line in (run_folder / "results.jsonl").read_text().splitlines()]
    return [r["correct"] for r in lines if r["meta"]["mode"] == mode]


def test_two_eval_runs_compare_mode_by_mode_and_the_report_is_written(two_runs, tmp_path, capsys):
    a, b, report = two_runs / "a", two_runs / "b", tmp_path / "reports" / "a-vs-b.md"
    code, out, err = run(["compare", str(a), str(b), "--out", str(report)], capsys)
    assert code == 0, err
    assert out == report.read_text() and out.startswith(REPORT_START) and f"l2s: wrote {report}" in err
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    for mode in ("base", "steered"):
        right_a, right_b = sum(_verdicts(a, mode)), sum(_verdicts(b, mode))
        assert rows[mode][1:4] == ["2", f"{right_a}/2 = {right_a / 2:.3f}", f"{right_b}/2 = {right_b / 2:.3f}"]
    assert f"classifier: unset -> '{two_runs / 'classifier'}'" in out     # what makes the runs differ
    assert run(["compare", str(a), str(b), "--out", str(report)], capsys)[0] == 0   # its own report: replaced


def test_the_report_is_written_though_the_reader_of_the_table_is_gone(two_runs, tmp_path, monkeypatch):
    from tests.shapes.test_compare import ClosedPipe

    report = tmp_path / "a-vs-b.md"
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["compare", str(two_runs / "a"), str(two_runs / "b"), "--out", str(report)]) == 1
    assert report.read_text().startswith(REPORT_START)


def test_a_users_file_and_a_run_folder_are_never_written(two_runs, tmp_path, capsys):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    for out, said in ((mine, "exists and is not a report of this command"),
                      (two_runs / "a" / "compared.md", "an l2s run folder that its command owns")):
        code, stdout, err = run(["compare", str(two_runs / "a"), str(two_runs / "b"), "--out", str(out)], capsys)
        (line,) = error_lines(err)
        assert code == 2 and said in line and not stdout, line
    assert mine.read_text() == "my notes\n" and not (two_runs / "a" / "compared.md").exists()


def test_runs_scored_differently_or_sharing_no_image_are_refused_in_one_line(two_runs, tmp_path, capsys):
    rescored = tmp_path / "rescored"
    shutil.copytree(two_runs / "b", rescored)
    summary = json.loads((rescored / "summary.json").read_text())
    summary["settings"]["rule"] = "t2i_compbench"
    (rescored / "summary.json").write_text(json.dumps(summary))
    code, _, err = run(["compare", str(two_runs / "a"), str(rescored)], capsys)
    (line,) = error_lines(err)
    assert code == 2 and "were scored differently (rule 'geneval' vs 't2i_compbench')" in line, line
    other_seed = tmp_path / "seed1"
    assert main(TINY_RUN[:7] + ["--seeds", "1"] + TINY_RUN[9:] + ["--out", str(other_seed)]) == 0
    code, _, err = run(["compare", str(two_runs / "a"), str(other_seed)], capsys)
    (line,) = error_lines(err)
    assert code == 2 and "share no image (the same prompt, seed and mode)" in line, line
    code, _, err = run(["compare", str(two_runs / "a"), str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such folder" in error_lines(err)[0]


def test_an_images_run_pairs_with_a_generated_runs_steered_images_given_modes(two_runs, tmp_path, capsys):
    scored = tmp_path / "scored"
    assert main(["eval", "--images", str(two_runs / "a" / "steered"), "--quiet", "--out", str(scored)]) == 0
    code, _, err = run(["compare", str(scored), str(two_runs / "a")], capsys)
    assert code == 2 and "pair one of each with --modes A_MODE=B_MODE" in error_lines(err)[0], err
    code, out, err = run(["compare", str(scored), str(two_runs / "a"), "--modes", "images=steered"], capsys)
    right = sum(_verdicts(two_runs / "a", "steered"))     # the same images, scored alike
    assert code == 0 and f"| images=steered | 2 | {right}/2 = {right / 2:.3f} | {right}/2 =" in out, err
    code, out, err = run(["compare", str(scored), str(two_runs / "a"), "--modes", "images=stered"], capsys)
    (line,) = error_lines(err)
    assert code == 2 and "holds the modes images, B" in line and "base, steered" in line and not out, line
    with pytest.raises(SystemExit) as refused:                   # not a pair: argparse's one line
        main(["compare", str(scored), str(two_runs / "a"), "--modes", "images"])
    (line,) = error_lines(capsys.readouterr().err)
    assert refused.value.code == 2 and "give RUN_A's mode=RUN_B's mode" in line, line
