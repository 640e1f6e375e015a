"""Prompt sets: GenEval-style, Learn-to-Steer multi-relation, the shapes world's, ``--prompts`` names, seeds."""
import re

import pytest

from l2s.errors import L2SError
from l2s.evaluation import (
    COCO_CLASSES,
    L2S_COCO_OBJECTS,
    MIXED_OBJECTS,
    MULTI_RELATION_PATTERNS,
    OOD_OBJECTS,
    PromptSet,
    PromptSpec,
    RelationCheck,
    geneval_position_prompts,
    multi_relation_prompts,
    parse_seeds,
    prompt_set_help,
    resolve_named_prompt_set,
    resolve_prompt_set,
    with_article,
)
from l2s.parsing import parse_prompt
from l2s.relations import PROMPT_PHRASE
from l2s.shapes import ShapesDetector, shapes_multi_relation_prompts, shapes_position_prompts


def test_class_lists():
    assert len(COCO_CLASSES) == 80 == len(set(COCO_CLASSES))
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    assert (len(L2S_COCO_OBJECTS), len(MIXED_OBJECTS), len(OOD_OBJECTS)) == (16, 17, 16)
    assert set(L2S_COCO_OBJECTS) <= set(COCO_CLASSES + ("mouse",))
    assert with_article("apple") == "an apple" and with_article("umbrella") == "an umbrella"
    assert with_article("cat") == "a cat"
    assert [n for n in COCO_CLASSES if with_article(n).startswith("an ")] == [
        "airplane", "elephant", "umbrella", "apple", "orange", "oven"]


def test_geneval_position_prompts():
    specs = geneval_position_prompts(100, seed=0)
    assert len(specs) == 100 == len({s.prompt for s in specs})
    assert [s.prompt for s in specs] == [s.prompt for s in geneval_position_prompts(100, seed=0)]
    assert [s.prompt for s in specs] != [s.prompt for s in geneval_position_prompts(100, seed=1)]
    assert {s.checks[0].relation for s in specs} == {"left of", "right of", "above", "below"}
    for spec in specs:
        (check,) = spec.checks
        assert check.subject != check.object and spec.tag == "position"
        assert spec.prompt == f"a photo of {with_article(check.subject)} {check.relation} {with_article(check.object)}"
        assert spec.objects == (check.subject, check.object)
    assert any(" an " in s.prompt for s in specs)
    with pytest.raises(L2SError, match="distinct prompts"):
        geneval_position_prompts(9, classes=["cat", "dog"])  # only 2 * 4 exist


@pytest.mark.parametrize("pattern", sorted(MULTI_RELATION_PATTERNS))
def test_multi_relation_prompts(pattern):
    n_objects, n_relations = pattern
    specs = multi_relation_prompts(n_objects, n_relations, n=50, seed=3)
    assert len(specs) == 50 == len({s.prompt for s in specs})
    assert [s.prompt for s in specs] == [s.prompt for s in multi_relation_prompts(n_objects, n_relations, n=50, seed=3)]
    phrase = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
    for spec in specs:
        assert spec.tag == f"{n_objects}obj_{n_relations}rel" and spec.prompt.startswith("a photo of a ")
        assert len(spec.checks) == n_relations
        assert len({c.relation for c in spec.checks}) == n_relations  # without replacement
        assert len(spec.objects) == n_objects and set(spec.objects) <= set(L2S_COCO_OBJECTS)
        for check in spec.checks:
            assert f"a {check.subject} {phrase[check.relation]} a {check.object}" in spec.prompt
    first = specs[0].checks
    if pattern in ((3, 2), (4, 3), (5, 3)):
        assert first[0].object == first[1].subject  # chained
    if pattern in ((4, 2), (5, 3)):
        assert " and a " in specs[0].prompt and first[-2].object != first[-1].subject


def test_multi_relation_prompt_shape_and_errors():
    spec = multi_relation_prompts(5, 3, n=1, seed=0, objects=OOD_OBJECTS)[0]
    a, r1, b, r2, c, d, r3, e = re.fullmatch(
        r"a photo of a (\w+) (.+?) a (\w+) (.+?) a (\w+) and a (\w+) (.+?) a (\w+)", spec.prompt).groups()
    assert [(x.subject, x.object) for x in spec.checks] == [(a, b), (b, c), (d, e)]
    with pytest.raises(L2SError, match="no prompt pattern"):
        multi_relation_prompts(3, 3)
    with pytest.raises(L2SError, match="at least 5"):
        multi_relation_prompts(5, 3, objects=["cat", "dog"])


def test_shapes_position_prompts_name_what_the_detector_finds_and_the_parser_reads():
    specs = shapes_position_prompts(30, seed=3)
    assert len({s.prompt for s in specs}) == 30
    detector = ShapesDetector()
    for spec in specs:
        (check,) = spec.checks
        assert spec.prompt == f"a {check.subject} {PROMPT_PHRASE[check.relation]} a {check.object}"
        colour_a, shape_a = detector.parse_label(check.subject)
        colour_b, shape_b = detector.parse_label(check.object)
        assert None not in (colour_a, shape_a, colour_b, shape_b) and colour_a != colour_b
        (triplet,) = parse_prompt(spec.prompt).triplets  # steering sees the checked relation
        assert (triplet.subject, triplet.relation, triplet.object) == (check.subject, check.relation, check.object)
    assert {s.checks[0].relation for s in specs} == {"left of", "right of", "above", "below"}
    assert [s.prompt for s in shapes_position_prompts(30, seed=3)] == [s.prompt for s in specs]
    assert [s.prompt for s in shapes_position_prompts(30, seed=4)] != [s.prompt for s in specs]


@pytest.mark.parametrize("n_objects, n_relations", [(3, 2), (4, 3), (4, 2)])
def test_shapes_multi_relation_prompts_chain_their_checks(n_objects, n_relations):
    specs = shapes_multi_relation_prompts(n_objects, n_relations, n=10, seed=0)
    assert len({s.prompt for s in specs}) == 10
    for spec in specs:
        assert spec.tag == f"{n_objects}obj_{n_relations}rel" and not spec.prompt.startswith("a photo")
        assert len(spec.objects) == n_objects and len(spec.checks) == n_relations
        assert len({c.relation for c in spec.checks}) == n_relations
        assert len({label.split()[0] for label in spec.objects}) == n_objects  # distinct colours
        parsed = [(t.subject, t.relation, t.object) for t in parse_prompt(spec.prompt).triplets]
        assert parsed == [(c.subject, c.relation, c.object) for c in spec.checks]


def test_resolve_prompt_set_names():
    specs, _ = resolve_prompt_set("geneval", 5, seed=1)
    assert len(specs) == 5 and all(s.prompt.startswith("a photo of ") for s in specs)
    specs, _ = resolve_prompt_set("multi:3,2", 4)
    assert len(specs) == 4 and all(len(s.checks) == 2 for s in specs)
    # the shapes world's sets are named by whoever passes them (l2s eval: tests/cli/test_evaluate.py)
    with pytest.raises(L2SError, match="not a prompt set"):
        resolve_prompt_set("shapes")


def test_a_files_prompts_are_named_by_their_line_and_a_generated_sets_by_their_index(tmp_path):
    path = tmp_path / "spatial.txt"
    path.write_text("a cat above a dog\n\na red car\na bird left of a bear\na cup below a book\n")
    specs, names, skipped = resolve_named_prompt_set(str(path), 2)
    assert [s.prompt for s in specs] == ["a cat above a dog", "a bird left of a bear"] and skipped == 1
    assert names == [f"{path}:1", f"{path}:4"]
    specs, names, _ = resolve_named_prompt_set("geneval", 3)
    assert names == ["prompt 0", "prompt 1", "prompt 2"] and (specs, 0) == resolve_prompt_set("geneval", 3)


def test_prompt_sets_passed_by_name_resolve_and_describe_themselves():
    spec = PromptSpec("a cat above a dog", (RelationCheck("cat", "above", "dog"),))
    sets = {"mine": PromptSet(position=lambda n, seed: [spec] * n, position_help="my prompts",
                              multi_relation=lambda o, r, n, seed: [spec] * (o + r), multi_relation_help="my chains")}
    assert resolve_prompt_set("mine", 3, sets=sets) == ([spec] * 3, 0)
    assert resolve_prompt_set("mine:2,1", sets=sets) == ([spec] * 3, 0)
    assert prompt_set_help(sets).startswith("mine (my prompts), mine:N_OBJ,N_REL (my chains), or a file")
    with pytest.raises(L2SError, match=r"write mine:N_OBJ,N_REL, e.g. mine:3,2"):
        resolve_prompt_set("mine:3", sets=sets)
    with pytest.raises(L2SError, match=r"not a prompt set \(mine, mine:N_OBJ,N_REL\)"):
        resolve_prompt_set("geneval", sets=sets)


def test_parse_seeds():
    assert parse_seeds("0,1,2,3") == [0, 1, 2, 3]
    assert parse_seeds("7, 0-2") == [7, 0, 1, 2]
    for bad in ("", "a", "1,1", "3-1", "-1"):
        with pytest.raises(L2SError, match="seeds"):
            parse_seeds(bad)
