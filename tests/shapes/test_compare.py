"""``l2s shapes compare``: base, steering and tuned rows from bench results, with the training cost
and the break-even image count computed from the logged CPU seconds."""
from __future__ import annotations

import json

import pytest

from l2s.cli import main


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
    (tmp_path / "ss.json").write_text(json.dumps(_bench(_mode(0.6, 0.7, 1.1, found=0.91), _mode(0.95, 0.97, 3.1), 0.8,
                                                        "ss")))
    log = [{"epoch": 0, "eval_strict": 0.3}, {"epoch": 1, "cpu_s": 5400.0}, {"epoch": 2, "cpu_s": 1800.0}]
    run = _grpo_run(tmp_path / "grpo", log, 2)
    code = main(["shapes", "compare", "--bench", str(tmp_path / "base.json"),
                 "--tuned", f"GRPO-SS={tmp_path / 'ss.json'},{run}", "--out", str(tmp_path / "new" / "t.md")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = cells(lines[0]), {cells(line)[0]: dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]}
    assert list(rows) == ["base", "steering", "GRPO-SS", "GRPO-SS + steering"]
    assert header[-3:] == ["GRPO CPU-h", "extra CPU-s/img", "break-even images"]
    assert rows["steering"]["two obj colour"] == "0.950" and rows["steering"]["extra CPU-s/img"] == "3.00"
    assert rows["steering"]["multi 4/3 colour"] == "0.400" and rows["base"]["reward score"] == "0.100"
    # 7200 CPU-s of training over steering's 3 extra CPU-s per image: 2400 images
    assert rows["GRPO-SS"]["GRPO CPU-h"] == "2.00" and rows["GRPO-SS"]["break-even images"] == "2400"
    assert rows["GRPO-SS"]["no rel: found"] == "0.800" and rows["GRPO-SS"]["reward score"] == "-"
    assert rows["GRPO-SS"]["two obj found"] == "0.910" and rows["base"]["two obj found"] == "0.970"
    assert rows["GRPO-SS + steering"]["extra CPU-s/img"] == "2.00" and rows["GRPO-SS + steering"]["break-even images"] == "-"
    assert (tmp_path / "new" / "t.md").read_text().strip() == "\n".join(lines)


@pytest.mark.parametrize("bench, tuned, message", [
    ("base", "GRPO", "bad --tuned 'GRPO': use NAME=JSON or NAME=JSON,GRPO_RUN"),
    ("base", "X=/nonexistent.json", "/nonexistent.json: not a bench results JSON"),
    ("base", "X={tuned},{tmp}/nolog", "cannot read the GRPO run's log.jsonl and grpo.json"),
    ("base", "X={tuned},{tmp}/old", "no epochs with CPU seconds"),
    ("base", "X={tuned},{tmp}/lost", "logs epochs [1] but the run finished 2"),
    ("base", "X={base}", "--tuned X: its bench ran without --lora"),
    ("base", "X={other_seeds}", "--tuned X: its bench differs from --bench in seeds"),
    ("tuned", "X={tuned}", "--bench is a bench of a tuned model (--lora ss)"),
])
def test_sources_that_do_not_compare_fail_with_one_line(bench, tuned, message, tmp_path, capsys):
    modes = (_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))
    for name, data in (("base", _bench(*modes)), ("tuned", _bench(*modes, lora="ss")),
                       ("other_seeds", _bench(*modes, lora="ss", seeds=(0, 1)))):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
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
