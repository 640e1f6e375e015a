"""experiments/scripts/shapes_checkout_timing.py: configurations parsed, each one's rows in rounds, ratios to the first."""
from __future__ import annotations

import json

import pytest

from .test_scripts import _script_module


def test_configs_run_in_interleaved_rounds_and_the_table_divides_by_the_first(tmp_path, capsys, monkeypatch):
    module = _script_module("shapes_checkout_timing")
    seen = []

    def fake_child(code, classifier, mode, engine):
        seen.append((code.name, classifier, mode, engine))
        return {"steered": 4.0 if code.name == "old" else 2.0, "unsteered": 0.3, "l2s": str(code / "l2s")}

    monkeypatch.setattr(module, "run_child", fake_child)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    assert module.main(["--rounds", "2", "--json", str(tmp_path / "t.json"),
                        "--config", f"a={tmp_path / 'old'},shipped,fast",
                        "--config", f"b={tmp_path / 'new'},RUN/k4,fast+compiled,compile"]) == 0
    # rounds interleaved; a config without an engine field takes auto
    assert seen == [("old", "shipped", "fast", "auto"), ("new", "RUN/k4", "fast+compiled", "compile")] * 2
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[8].strip() for r in rows[1:]] == ["1.00", "0.50"]
    assert len(json.loads((tmp_path / "t.json").read_text())["rows"]["b"]) == 2
    with pytest.raises(SystemExit, match=r"NAME=CODE_DIR,CLASSIFIER,MODE\[,ENGINE\]"):
        module.parse_config("oops")
    with pytest.raises(SystemExit, match="got 'a=.,k,fast,compile,extra'"):
        module.parse_config("a=.,k,fast,compile,extra")
