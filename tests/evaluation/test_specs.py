"""Per-image scoring of relation checks, and prompt specs."""
import json

import pytest

from l2s.errors import L2SError, UnsupportedRelationError
from l2s.evaluation import Detection, PromptSpec, RelationCheck, geneval_position_prompts, score_image


def _dets(**boxes):
    return {name.replace("_", " "): Detection(name.replace("_", " "), box, 0.9) for name, box in boxes.items()}


def test_score_image_correct_and_missing():
    dets = _dets(cat=(0, 0, 10, 10), dog=(40, 0, 50, 10))
    result = score_image(dets, [RelationCheck("cat", "left of", "dog")])
    assert result.correct and result.score == 1.0 and result.reason == "ok"
    assert result.checks[0].found == ["left of"]
    result = score_image({"cat": dets["cat"], "dog": None}, [RelationCheck("cat", "left of", "dog")])
    assert not result.correct and "not detected: dog" in result.reason


def test_multi_relation_scoring_is_strict():
    # "above" holds for (A, B) only; the published evaluation would let it pass (C, D) too
    dets = _dets(a=(0, 0, 10, 10), b=(0, 40, 10, 50), c=(60, 40, 70, 50), d=(60, 0, 70, 10))
    checks = [RelationCheck("a", "above", "b"), RelationCheck("c", "above", "d")]
    result = score_image(dets, checks)
    assert not result.correct
    assert [c.holds for c in result.checks] == [True, False]
    assert result.checks[1].found == ["below"]
    assert "c not above d" in result.reason
    assert score_image(dets, [checks[0], RelationCheck("c", "below", "d")]).correct


@pytest.mark.parametrize("rule", ["geneval", "t2i_compbench"])
def test_a_relation_between_one_label_twice_fails_saying_it_cannot_be_judged(rule):
    # One detection per label: "found no relation" would blame the image; the count stays as it was
    dets = {label: Detection(label, (0, 0, 10, 10), 0.9) for label in ("red circle", "Red  circle")}
    result = score_image(dets, [RelationCheck("red circle", "left of", "Red  circle")], rule=rule)
    assert not result.correct and not result.checks[0].holds
    assert result.checks[0].reason == ("'red circle' left of 'Red  circle' cannot be judged: the detector finds one "
                                       "'Red  circle' per image, so it cannot tell the two apart")


def test_score_image_diagonal_and_rules():
    dets = _dets(a=(0, 0, 10, 10), b=(30, 30, 40, 40))
    assert score_image(dets, [RelationCheck("a", "top-left of", "b")]).correct
    assert not score_image(dets, [RelationCheck("a", "top-right of", "b")]).correct
    t2i = score_image(dets, [RelationCheck("a", "on the left of", "b")], rule="t2i_compbench")
    assert not t2i.correct and t2i.checks[0].position_score == 0.0  # |dx| == |dy|: no dominant axis
    near = score_image(dets, [RelationCheck("a", "near", "b")], rule="t2i_compbench")
    assert near.correct and near.score == pytest.approx(0.25 * 0.9 * 2 + 0.5)
    with pytest.raises(UnsupportedRelationError, match="t2i_compbench"):
        score_image(dets, [RelationCheck("a", "near", "b")])
    with pytest.raises(L2SError, match="unknown evaluation rule"):
        score_image(dets, [RelationCheck("a", "above", "b")], rule="visor")


def test_prompt_spec_round_trip():
    spec = geneval_position_prompts(1, seed=4)[0]
    assert PromptSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert RelationCheck("a", "to the right of", "b").relation == "right of"
