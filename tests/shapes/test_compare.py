"""``l2s shapes compare``: base, steering and tuned rows from bench results, with the training cost
and the break-even image count computed from the logged CPU seconds."""
from __future__ import annotations

import json
import shutil

import pytest

from l2s.cli import main
from l2s.errors import UsageError
from l2s.shapes import shipped_assets


def _mode(strict, colour, cpu, reward=None, found=0.97):
    mode = {"accuracy": strict, "colour_accuracy": colour, "generate_cpu_s_per_image": cpu, "objects_found": found}
    return mode if reward is None else {**mode, "reward_mean": reward, "reward_auc": 0.9}


def _bench(base, steered, found=0.9, lora=None, seeds=(100, 101)):
    parts = [{"key": "position", "modes": {"base": base, "steered": steered}},
             {"key": "multi_4_3", "modes": {"base": _mode(0.1, 0.2, 1.0), "steered": _mode(0.3, 0.4, 9.0)}}]
    settings = {"pipeline": "shipped", "scale": 1.0, "seeds": list(seeds), "lora": lora}
    return {"parts": parts, "no_relation": {"objects_found": found, "colours_found": 0.95, "position_spread": 0.2},
            "settings": settings}


def _grpo_run(folder, log, epochs_done):
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (folder / "grpo.json").write_text(json.dumps({"epochs_done": epochs_done}))
    return folder


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_costs_and_break_even(tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(_bench(_mode(0.3, 0.3, 1.0, 0.1), _mode(0.9, 0.95, 4.0, 0.5))))
    (tmp_path / "ss.json").write_text(json.dumps(_bench({**_mode(0.9, 0.96, 1.1, found=0.91), "extra_objects": 0.25},
                                                        _mode(0.95, 0.97, 3.1), 0.8, "ss")))
    (tmp_path / "weak.json").write_text(json.dumps(_bench(_mode(0.6, 0.7, 1.1), _mode(0.95, 0.97, 3.1), 0.8, "weak")))
    log = [{"epoch": 0, "eval_strict": 0.3}, {"epoch": 1, "cpu_s": 5400.0}, {"epoch": 2, "cpu_s": 1800.0}]
    run = _grpo_run(tmp_path / "grpo", log, 2)
    code = main(["shapes", "compare", "--bench", str(tmp_path / "base.json"),
                 "--tuned", f"GRPO-SS={tmp_path / 'ss.json'},{run}",
                 "--tuned", f"weak={tmp_path / 'weak.json'},{run}",
                 "--out", str(tmp_path / "new" / "t.md")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = cells(lines[0]), {cells(line)[0]: dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]}
    assert list(rows) == ["base", "steering", "GRPO-SS", "GRPO-SS + steering", "weak", "weak + steering"]
    # less accurate than steering (0.70 vs 0.95 two-object colour): training never pays for itself
    assert rows["weak"]["break-even images"] == "never" and rows["weak"]["GRPO CPU-h"] == "2.00"
    assert header[-3:] == ["GRPO CPU-h", "extra CPU-s/img", "break-even images"]
    assert rows["steering"]["two obj colour"] == "0.950" and rows["steering"]["extra CPU-s/img"] == "3.00"
    assert rows["steering"]["multi 4/3 colour"] == "0.400" and rows["base"]["reward score"] == "0.100"
    # 7200 CPU-s of training over steering's 3 extra CPU-s per image: 2400 images
    assert rows["GRPO-SS"]["GRPO CPU-h"] == "2.00" and rows["GRPO-SS"]["break-even images"] == "2400"
    assert rows["GRPO-SS"]["no rel: found"] == "0.800" and rows["GRPO-SS"]["reward score"] == "-"
    assert rows["GRPO-SS"]["two obj found"] == "0.910" and rows["base"]["two obj found"] == "0.970"
    assert rows["GRPO-SS"]["two obj extra"] == "0.250" and rows["base"]["two obj extra"] == "-"   # older bench: -
    assert rows["GRPO-SS + steering"]["extra CPU-s/img"] == "2.00" and rows["GRPO-SS + steering"]["break-even images"] == "-"
    assert (tmp_path / "new" / "t.md").read_text().strip() == "\n".join(lines)


class ClosedPipe:
    """A stdout whose reader is gone (``| head`` that has read its lines)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_the_out_file_is_written_though_the_reader_of_the_table_is_gone(tmp_path, monkeypatch):
    (tmp_path / "base.json").write_text(json.dumps(_bench(_mode(0.3, 0.3, 1.0), _mode(0.9, 0.95, 4.0))))
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["shapes", "compare", "--bench", str(tmp_path / "base.json"), "--out", str(tmp_path / "t.md")]) == 1
    assert (tmp_path / "t.md").read_text().startswith("| method |")


@pytest.mark.parametrize("bench, tuned, message", [
    ("base", "GRPO", "bad --tuned 'GRPO': use NAME=JSON or NAME=JSON,GRPO_RUN"),
    ("base", "X=/nonexistent.json", "/nonexistent.json: not a bench results JSON"),
    ("base", "X={tuned},{tmp}/nolog", "cannot read the GRPO run's log.jsonl and grpo.json"),
    ("base", "X={tuned},{tmp}/old", "no epochs with CPU seconds"),
    ("base", "X={tuned},{tmp}/lost", "logs epochs [1] but the run finished 2"),
    ("base", "X={base}", "--tuned X: its bench ran without --lora"),
    ("base", "X={other_seeds}", "--tuned X: its bench differs from --bench in seeds"),
    ("tuned", "X={tuned}", "--bench is a bench of a tuned model (--lora ss)"),
    ("base_only", "X={tuned}", "--bench has no steered images of the two-object part (benched with --modes base)"),
])
def test_sources_that_do_not_compare_fail_with_one_line(bench, tuned, message, tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    for name, data in (("base", _bench(*modes)), ("tuned", _bench(*modes, lora="ss")),
                       ("other_seeds", _bench(*modes, lora="ss", seeds=(0, 1)))):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    base_only = _bench(*modes)
    del base_only["parts"][0]["modes"]["steered"]
    (tmp_path / "base_only.json").write_text(json.dumps(base_only))
    _grpo_run(tmp_path / "old", [{"epoch": 1, "training_s": 3}], 1)
    _grpo_run(tmp_path / "lost", [{"epoch": 1, "cpu_s": 3}], 2)
    tuned = tuned.format(base=tmp_path / "base.json", tuned=tmp_path / "tuned.json",
                         other_seeds=tmp_path / "other_seeds.json", tmp=tmp_path)
    code = main(["shapes", "compare", "--bench", str(tmp_path / f"{bench}.json"), "--tuned", tuned])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("l2s:")]
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_cost_reads_a_log_whose_last_line_was_torn_by_a_kill(tmp_path):
    from l2s.shapes.compare import training_cpu_seconds

    run = _grpo_run(tmp_path / "run", [{"epoch": 0}, {"epoch": 1, "cpu_s": 3.0}, {"epoch": 2, "cpu_s": 4.0}], 2)
    with open(run / "log.jsonl", "a") as log:
        log.write('{"epoch": 3, "cpu')          # a writer killed mid-line: epoch 3 never finished
    assert training_cpu_seconds(run) == 7.0


def test_out_never_replaces_an_input_or_another_commands_file(tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    (tmp_path / "base.json").write_text(json.dumps(_bench(*modes)))
    (tmp_path / "tuned.json").write_text(json.dumps(_bench(*modes, lora="ss")))
    run = _grpo_run(tmp_path / "grpo", [{"epoch": 1, "cpu_s": 3.0}], 1)
    (run / ".l2s.kind").write_text("grpo\n")
    (tmp_path / "notes.md").write_text("# my notes\n")
    argv = ["shapes", "compare", "--bench", str(tmp_path / "base.json"), "--tuned", f"X={tmp_path / 'tuned.json'},{run}"]
    refused = [(tmp_path / "base.json", "give a Markdown file's path (ending in .md)"),
               (run / "grpo.json", "give a Markdown file's path"),
               (tmp_path, "is a folder; give a file path"),
               (run / "table.md", f"inside {run.resolve()}, an l2s run folder"),
               (tmp_path / "notes.md", "exists and is not a report of this command")]
    for out, message in refused:
        assert main(argv + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"l2s: error: --out {out}: {message}" in err, err
    assert (tmp_path / "notes.md").read_text() == "# my notes\n"
    assert json.loads((run / "grpo.json").read_text()) == {"epochs_done": 1}
    assert not (run / "table.md").exists()
    assert main(argv + ["--out", str(tmp_path / "t.md")]) == 0
    assert main(argv + ["--out", str(tmp_path / "t.md")]) == 0    # its own table is replaced
    assert (tmp_path / "t.md").read_text().startswith("| method | ")


def test_benches_of_one_model_compare_by_weights_digest_wherever_it_lay(tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    base, tuned = _bench(*modes), _bench(*modes, lora="ss")
    for name, bench in (("base", base), ("tuned", tuned)):
        (tmp_path / f"{name}.json").write_text(json.dumps(bench))
    argv = ["shapes", "compare", "--bench", str(tmp_path / "base.json"), "--tuned", f"X={tmp_path / 'tuned.json'}"]

    def compare(base_settings, tuned_settings):
        (tmp_path / "base.json").write_text(json.dumps({**base, "settings": {**base["settings"], **base_settings}}))
        (tmp_path / "tuned.json").write_text(json.dumps({**tuned, "settings": {**tuned["settings"], **tuned_settings}}))
        code = main(argv)
        return code, capsys.readouterr().err

    assert compare({"pipeline": "/a", "pipeline_digest": "d1"}, {"pipeline": "/copy", "pipeline_digest": "d1"})[0] == 0
    code, err = compare({"pipeline": "/a", "pipeline_digest": "d1"}, {"pipeline": "/a", "pipeline_digest": "d2"})
    assert code == 2 and "its bench differs from --bench in pipeline" in err     # retrained in place
    code, err = compare({"pipeline": "/a"}, {"pipeline": "/nowhere"})               # nothing to tell them apart by
    assert code == 2 and "differs from --bench in pipeline" in err
    shipped = shipped_assets().pipeline
    copy = tmp_path / "copy"
    shutil.copytree(shipped, copy, ignore=shutil.ignore_patterns("classifier*", "grpo_adapter", "spatial_score"))
    assert compare({"pipeline": str(shipped)}, {"pipeline": str(copy)})[0] == 0      # older benches: the folders
    (copy / "model_index.json").write_text((copy / "model_index.json").read_text() + " ")
    assert compare({"pipeline": str(shipped)}, {"pipeline": str(copy)})[0] == 2


def test_out_refuses_an_input_and_takes_an_empty_file(tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    (tmp_path / "base.md").write_text(json.dumps(_bench(*modes)))     # a results JSON under another name
    argv = ["shapes", "compare", "--bench", str(tmp_path / "base.md")]
    assert main(argv + ["--out", str(tmp_path / "base.md")]) == 2
    assert f"would overwrite {tmp_path / 'base.md'}, an input of this command" in capsys.readouterr().err
    (tmp_path / "table.md").write_text("| method |\n")
    assert main(["shapes", "compare", "--bench", str(tmp_path / "table.md")]) == 2
    err = capsys.readouterr().err
    assert "not a bench results JSON (Expecting value: line 1 column 1 (char 0))" in err
    assert f"; its JSON is {tmp_path / 'table.json'}" in err
    (tmp_path / "empty.md").write_text("")
    assert main(argv + ["--out", str(tmp_path / "empty.md")]) == 0
    assert (tmp_path / "empty.md").read_text().startswith("| method | ")


def test_a_tuned_row_shares_the_steering_classifier_and_costs_its_own_run(tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    base, tuned = _bench(*modes), _bench(*modes, lora="ss")
    base["settings"]["classifiers"] = {"dual": "/one/checkout/l2s/shapes/assets/classifier"}
    run = _grpo_run(tmp_path / "run", [{"epoch": 1, "cpu_s": 3}], 1)

    def compare(classifier, *extra, digest=None, name="X"):
        tuned["settings"].update(classifiers={"dual": classifier}, lora_digest=digest)
        (tmp_path / "base.json").write_text(json.dumps(base))
        (tmp_path / "tuned.json").write_text(json.dumps(tuned))
        code = main(["shapes", "compare", "--bench", str(tmp_path / "base.json"),
                     "--tuned", f"{name}={tmp_path / 'tuned.json'},{run}", *extra])
        return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("l2s:")]

    assert compare("/another/checkout/l2s/shapes/assets/classifier")[0] == 0     # the shipped one, elsewhere
    code, err = compare(str(shipped_assets().ablation_classifier))
    assert code == 2 and err == ["l2s: error: --tuned X: its bench differs from --bench in steering classifier"]
    code, err = compare("/another/checkout/l2s/shapes/assets/classifier", digest="0123abcd")
    assert code == 2 and f"the GRPO run {run} did not make the adapter its bench used (--lora ss)" in err[0]
    tuned["settings"]["pipeline_digest"] = base["settings"]["pipeline_digest"] = "feed"
    (run / "grpo.json").write_text(json.dumps({"epochs_done": 1, "base_model": "weights beef"}))
    code, err = compare("/another/checkout/l2s/shapes/assets/classifier")
    assert code == 2 and f"the GRPO run {run} tuned another base model (weights beef) than its bench ran " \
                         "(weights feed)" in err[0]
    (run / "grpo.json").write_text(json.dumps({"epochs_done": 1, "base_model": "weights feed"}))
    assert compare("/another/checkout/l2s/shapes/assets/classifier")[0] == 0
    code, err = compare("/another/checkout/l2s/shapes/assets/classifier", "--tuned", f"X={tmp_path / 'tuned.json'}")
    assert code == 2 and err == ["l2s: error: --tuned: the name 'X' is given twice (each row needs its own)"]


def test_benches_that_scored_with_one_reward_model_compare_however_it_was_typed(tmp_path, monkeypatch):
    from l2s.reward.identity import reward_identity
    from l2s.shapes.compare import Tuned, check_comparable

    best = tmp_path / "ss" / "best"
    (best / "tokenizer").mkdir(parents=True)
    (best / "model.safetensors").write_bytes(b"first")
    monkeypatch.chdir(tmp_path)
    position = {"key": "position", "modes": {"base": {}, "steered": {}}}

    def bench(reward, lora=None):
        return {"parts": [position], "settings": {"pipeline": "p", "reward_model": reward, "lora": lora}}

    before = reward_identity("ss/best")
    check_comparable(bench("ss"), [Tuned("t", bench(reward_identity("ss/"), "a"), None)])   # typed, then recorded
    check_comparable(bench(before), [Tuned("t", bench(reward_identity("./ss"), "a"), None)])
    (best / "model.safetensors").write_bytes(b"retrained")         # the tuned bench scored with another model
    with pytest.raises(UsageError, match="differs from --bench in reward_model"):
        check_comparable(bench(before), [Tuned("t", bench(reward_identity("ss"), "a"), None)])
