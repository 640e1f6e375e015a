"""``--relations``: relations given by hand steer prompts the parser cannot read."""
import json

import pytest

import l2s.cli.generate
from l2s.cli import main
from l2s.cli.evaluate import _given_relations
from l2s.cli.relations import parse_relations, steer_given_relations
from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.errors import L2SError, PromptError
from l2s.evaluation.specs import PromptSpec, RelationCheck
from l2s.pipelines import wrap_pipeline

UNREADABLE = "to the left of a cat there is a dog"  # the parser finds no subject before "left of"


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("l2s: error:")]


def test_parse_relations():
    assert parse_relations(" dog , left of, cat ;cat,above,hat;") == [("dog", "left of", "cat"),
                                                                     ("cat", "above", "hat")]
    for bad, message in [("dog,left of", "item 1"), ("dog,left of,cat;,above,hat", "item 2"), (";", "no relation"),
                         ("checks", "is for 'l2s eval'")]:
        with pytest.raises(PromptError, match=message):
            parse_relations(bad)


def test_given_relations_replace_the_parser_in_the_plan():
    pipe = tiny_flux_pipeline(seed=0)
    steerer = wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=0))
    with pytest.raises(L2SError):
        steerer.plan(UNREADABLE)
    steer_given_relations(steerer, {UNREADABLE: [("dog", "left of", "cat")]}.get)
    plan = steerer.plan(UNREADABLE)
    assert plan.steered and [t.to_dict() for t in plan.parsed.triplets] == [
        {"subject": "dog", "relation": "left of", "object": "cat"}]
    assert plan.phrases == ["dog", "cat"] and plan.pairs == [(0, 1)]
    assert steerer.plan("a cat above a dog").parsed.triplets[0].relation == "above"  # others: the parser


def test_eval_relations_are_checked_against_every_prompt_before_any_model():
    specs = [PromptSpec(UNREADABLE, (RelationCheck("dog", "left of", "cat"),)),
             PromptSpec("a dog, and a cat on its right", (RelationCheck("dog", "left of", "cat"),))]
    given = _given_relations("checks", specs)
    assert given(UNREADABLE) == [("dog", "left of", "cat")] and given("other") is None
    assert _given_relations("dog,left of,cat", specs)(specs[1].prompt) == [("dog", "left of", "cat")]
    with pytest.raises(L2SError, match="hat"):
        _given_relations("dog,left of,hat", specs)


def test_generate_unreadable_prompt_with_relations(tmp_path, capsys):
    code = main(["generate", UNREADABLE, "--model", "tiny", "--out", str(tmp_path / "no"), "--quiet"])
    assert code == 2 and len(error_lines(capsys.readouterr().err)) == 1
    out = tmp_path / "yes"
    code = main(["generate", UNREADABLE, "--model", "tiny", "--relations", "dog,left of,cat", "--out", str(out),
                 "--quiet", "--steps", "2", "--schedule", "early-exit"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["relations_from"] == "--relations" and report["steered"] is True
    assert report["relations"] == [{"subject": "dog", "relation": "left of", "object": "cat"}]
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # not the lock
    last = err.strip().splitlines()[-1]
    assert last.startswith("l2s: wrote ") and last.endswith(f" in {out}")
    assert sorted(last[len("l2s: wrote "):-len(f" in {out}")].replace(" and ", ", ").split(", ")) == written


def test_relations_naming_an_absent_object_fail_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(l2s.cli.generate, "load_steerer", lambda args: pytest.fail("loaded a model"))
    code = main(["generate", UNREADABLE, "--relations", "dog,left of,horse", "--out", str(tmp_path), "--quiet"])
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "horse" in line


def test_a_misspelt_relation_or_shipped_classifier_name_gets_a_suggestion(tmp_path, capsys):
    from l2s.cli import main

    argv = ["generate", "a red circle left of a blue square", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv + ["--relations", "red circle,leftof,blue square"]) == 2
    assert "unknown relation class name 'leftof' (did you mean 'left of'?)" in capsys.readouterr().err
    assert main(argv + ["--classifier", "shapes-pos-onyl"]) == 2
    assert "classifier not found: shapes-pos-onyl (did you mean 'shapes-pos-only'?)" in capsys.readouterr().err
