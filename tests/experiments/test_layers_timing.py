"""experiments/scripts/shapes_layers_timing.py: every classifier times the same images, interleaved."""
from __future__ import annotations

import json

import pytest
import torch

import l2s.shapes as shapes_world

from .test_scripts import _script_module, _tiny_shapes_classifier


def test_timing_script_times_every_classifier_on_the_same_images(tmp_path, capsys, monkeypatch):
    import dataclasses

    from l2s.capture import AttentionCapture
    from l2s.classifier import RelationClassifier, first_blocks

    torch.manual_seed(0)
    pipe = shapes_world.build_shapes_pipeline(shapes_world.TINY_CONFIG, seed=0)
    full = _tiny_shapes_classifier(pipe)
    with AttentionCapture(pipe.transformer) as capture:
        layout = [[n, h, list(hw)] for n, h, hw in capture.layer_layout((8, 8))]
    full.save(tmp_path / "all")
    first = dataclasses.replace(full.config, layer_layout=first_blocks(layout, 1), channels=layout[0][1])
    RelationClassifier(first).save(tmp_path / "k1")
    monkeypatch.setattr(shapes_world, "load_shapes_pipeline", lambda path: pipe)
    module = _script_module("shapes_layers_timing")
    threads = torch.get_num_threads()
    try:
        assert module.main(["--classifiers", f"all={tmp_path / 'all'},k1={tmp_path / 'k1'}", "--prompts", "2",
                            "--rounds", "2", "--schedule", "fast", "--results", str(tmp_path / "t.md")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["all", "k1"]
    assert [r.split("|")[2].strip() for r in rows[1:]] == ["all", "1"]     # no layout: every layer
    raw = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert all(len(raw[name]["seconds"]) == 2 for name in ("all", "k1"))
    assert raw["all"]["plain"] == raw["k1"]["plain"]          # one unsteered time per round, shared
    with pytest.raises(SystemExit, match="name=DIR"):
        module.parse_classifiers("oops")


def _bench_result(position: list[bool], multi: list[bool]) -> dict:
    def mode(hits: list[bool]) -> dict:
        return {"accuracy": sum(hits) / len(hits), "colour_accuracy": sum(hits) / len(hits),
                "colour_correct_by_image": {f"{i}/100": h for i, h in enumerate(hits)}}

    return {"parts": [{"key": "position", "modes": {"steered": mode(position)}},
                      {"key": "multi_3_2", "modes": {"steered": mode(multi)}}]}


def test_layers_table_applies_the_rule(tmp_path, capsys):
    """Rule: two-object colour within 0.01, multi 3/2 not measurably lower, faster; smallest K wins."""
    results = {"all": _bench_result([True] * 95 + [False] * 5, [True] * 60 + [False] * 4),
               "k1": _bench_result([True] * 80 + [False] * 20, [True] * 60 + [False] * 4),   # two-object drop
               "k2": _bench_result([True] * 94 + [False] * 6, [False] * 16 + [True] * 48),   # multi lower, p < .05
               "k3": _bench_result([False] + [True] * 94 + [False] * 5, [True] * 59 + [False] * 5)}
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    seconds = {"all": [4.0, 4.1], "k1": [1.0, 1.1], "k2": [2.0, 2.1], "k3": [3.0, 3.1]}
    (tmp_path / "t.json").write_text(json.dumps({"rows": {k: {"seconds": v} for k, v in seconds.items()}}))
    module = _script_module("shapes_layers_table")
    runs = ",".join(f"{k}={tmp_path / k}.json" for k in ("k1", "k2", "k3"))
    assert module.main(["--reference", f"all={tmp_path / 'all.json'}", "--runs", runs, "--timing",
                        str(tmp_path / "t.json"), "--results", str(tmp_path / "table.md")]) == 0
    filed = json.loads((tmp_path / "table.json").read_text())
    verdicts = {r["name"]: r["conditions"] for r in filed["rows"]}
    assert verdicts["k1"] == {"two_object_colour": False, "multi_not_lower": True, "faster": True}
    assert verdicts["k2"] == {"two_object_colour": True, "multi_not_lower": False, "faster": True}
    assert verdicts["k3"] == {"two_object_colour": True, "multi_not_lower": True, "faster": True}
    assert filed["best"] == "k3" and "best K: k3" in capsys.readouterr().out
