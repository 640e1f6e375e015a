"""``l2s shapes compare``: base, steering and tuned rows from bench results, with the training cost
and the break-even image count computed from the logged CPU seconds."""
from __future__ import annotations

import json

import pytest

from l2s.cli import main


def _mode(strict, colour, cpu, reward=None):
    mode = {"accuracy": strict, "colour_accuracy": colour, "generate_cpu_s_per_image": cpu}
    return mode if reward is None else {**mode, "reward_mean": reward, "reward_auc": 0.9}


def _bench(base, steered, found=0.9):
    parts = [{"key": "position", "modes": {"base": base, "steered": steered}},
             {"key": "multi_4_3", "modes": {"base": _mode(0.1, 0.2, 1.0), "steered": _mode(0.3, 0.4, 9.0)}}]
    return {"parts": parts, "no_relation": {"objects_found": found, "colours_found": 0.95, "position_spread": 0.2}}


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_costs_and_break_even(tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(_bench(_mode(0.3, 0.3, 1.0, 0.1), _mode(0.9, 0.95, 4.0, 0.5))))
    (tmp_path / "ss.json").write_text(json.dumps(_bench(_mode(0.6, 0.7, 1.1), _mode(0.95, 0.97, 3.1), 0.8)))
    run = tmp_path / "grpo"
    run.mkdir()
    log = [{"epoch": 0, "eval_strict": 0.3}, {"epoch": 1, "cpu_s": 5400.0}, {"epoch": 2, "cpu_s": 1800.0}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    code = main(["shapes", "compare", "--bench", str(tmp_path / "base.json"),
                 "--tuned", f"GRPO-SS={tmp_path / 'ss.json'},{run}", "--out", str(tmp_path / "t.md")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = cells(lines[0]), {cells(line)[0]: dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]}
    assert list(rows) == ["base", "steering", "GRPO-SS", "GRPO-SS + steering"]
    assert header[-3:] == ["training CPU-h", "extra CPU-s/img", "break-even images"]
    assert rows["steering"]["two obj colour"] == "0.950" and rows["steering"]["extra CPU-s/img"] == "3.00"
    assert rows["steering"]["multi 4/3 colour"] == "0.400" and rows["base"]["reward score"] == "0.100"
    # 7200 CPU-s of training over steering's 3 extra CPU-s per image: 2400 images
    assert rows["GRPO-SS"]["training CPU-h"] == "2.00" and rows["GRPO-SS"]["break-even images"] == "2400"
    assert rows["GRPO-SS"]["no rel: found"] == "0.800" and rows["GRPO-SS"]["reward score"] == "-"
    assert rows["GRPO-SS + steering"]["extra CPU-s/img"] == "2.00" and rows["GRPO-SS + steering"]["break-even images"] == "-"
    assert (tmp_path / "t.md").read_text().strip() == "\n".join(lines)


@pytest.mark.parametrize("tuned, message", [
    ("GRPO", "bad --tuned 'GRPO': use NAME=JSON or NAME=JSON,GRPO_RUN"),
    ("X=/nonexistent.json", "/nonexistent.json: not a bench results JSON"),
    ("X={base},{tmp}", "no epochs with CPU seconds"),
])
def test_bad_sources_fail_with_one_line(tuned, message, tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(_bench(_mode(0.3, 0.3, 1.0), _mode(0.9, 0.9, 4.0))))
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 1, "training_s": 3}) + "\n")
    tuned = tuned.format(base=tmp_path / "base.json", tmp=tmp_path)
    code = main(["shapes", "compare", "--bench", str(tmp_path / "base.json"), "--tuned", tuned])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("l2s:")]
    assert code == 2 and len(err) == 1 and message in err[0], err
