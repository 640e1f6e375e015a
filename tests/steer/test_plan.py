"""A prompt's steering plan: relations that cannot all hold are named in one warning."""
import pytest

from l2s.demo import tiny_t5_tokenizer
from l2s.relations import DIAGONAL_CLASSES, PUBLISHED_CLASSES
from l2s.steer import SteeringPlan
from l2s.steer.plan import parsed_from_relations

PROMPT = "a cat left of a dog above a bird"


def _plan(relations, prompt=PROMPT, classes=PUBLISHED_CLASSES):
    parsed = parsed_from_relations(prompt, relations)
    return SteeringPlan.from_parsed(parsed, tiny_t5_tokenizer(), 64, classes)


@pytest.mark.parametrize("relations, named", [
    ([("cat", "left of", "dog"), ("dog", "left of", "cat")], "cat left of dog; dog left of cat"),
    ([("cat", "left of", "dog"), ("cat", "right of", "dog")], "cat left of dog; cat right of dog"),
    ([("cat", "above", "dog"), ("dog", "above", "bird"), ("bird", "above", "cat")],
     "cat above dog; dog above bird; bird above cat"),
])
def test_relations_that_cannot_all_hold_are_named(relations, named):
    assert _plan(relations).warnings == [
        f"these relations contradict each other ({named}): steering pulls the objects both ways"]


def test_a_diagonal_contradicts_on_its_own_axis_only():
    plan = _plan([("cat", "top-left of", "dog"), ("dog", "bottom-left of", "cat")], classes=DIAGONAL_CLASSES)
    assert any("contradict" in line and "cat top-left of dog" in line for line in plan.warnings)
    assert _plan([("cat", "top-left of", "dog"), ("dog", "top-left of", "bird")],
                 classes=DIAGONAL_CLASSES).warnings == []


def test_chains_repeats_and_separate_axes_are_no_contradiction():
    assert _plan([("cat", "left of", "dog"), ("dog", "above", "bird")]).warnings == []
    assert _plan([("cat", "left of", "dog"), ("cat", "left of", "dog")]).warnings == []
    assert _plan([("cat", "left of", "dog"), ("dog", "above", "cat")]).warnings == []
    parsed = SteeringPlan.from_prompt("a cat left of a dog left of a bird", tiny_t5_tokenizer(), 64,
                                      PUBLISHED_CLASSES)
    assert parsed.warnings == []


def test_the_report_names_the_token_group_each_relation_steers():
    plan = SteeringPlan.from_prompt("a cat left of a dog and a dog left of a cat", tiny_t5_tokenizer(), 64,
                                    PUBLISHED_CLASSES)
    assert plan.to_json()["relation_objects"] == [["cat", "dog"], ["dog #2", "cat #2"]]
    assert set(plan.to_json()["token_indices"]) == {"cat", "dog", "dog #2", "cat #2"}


def test_relations_spelled_as_classifier_classes_are_planned_and_checked():
    """A ParsedPrompt built by hand may spell its relations as the classifier does ("to the left of")."""
    from l2s.parsing import ParsedPrompt, Triplet

    prompt = "a cat left of a dog"
    parsed = ParsedPrompt(prompt, [Triplet("cat", "to the left of", "dog", (2, 5), (6, 13), (16, 19)),
                                   Triplet("dog", "to the left of", "cat", (16, 19), (6, 13), (2, 5))])
    plan = SteeringPlan.from_parsed(parsed, tiny_t5_tokenizer(), 64, PUBLISHED_CLASSES)
    assert plan.class_indices == [PUBLISHED_CLASSES.index("to the left of")] * 2
    assert plan.warnings == ["these relations contradict each other (cat to the left of dog; dog to the left of "
                             "cat): steering pulls the objects both ways"]
