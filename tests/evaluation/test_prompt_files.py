"""Prompt files: GenEval metadata lines, PromptSpec lines and plain prompt lists."""
import json

import pytest

from l2s.errors import L2SError
from l2s.evaluation import PromptSpec, RelationCheck, geneval_metadata, read_prompt_file, spec_from_metadata
from l2s.shapes import shapes_multi_relation_prompts


def test_geneval_metadata_is_geneval_format_and_round_trips():
    spec = PromptSpec("a photo of a dog right of a teddy bear", (RelationCheck("dog", "right of", "teddy bear"),))
    published = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                                {"class": "dog", "count": 1, "position": ["right of", 0]}],
                 "prompt": "a photo of a dog right of a teddy bear"}
    assert geneval_metadata(spec) == published
    assert spec_from_metadata(published) == spec
    for multi in shapes_multi_relation_prompts(4, 3, n=3) + shapes_multi_relation_prompts(4, 2, n=3):
        line = geneval_metadata(multi)
        assert "include" in line and "checks" not in line
        assert spec_from_metadata(json.loads(json.dumps(line))) == multi
    diagonal = PromptSpec("a cat top-left of a dog", (RelationCheck("cat", "top-left of", "dog"),))
    assert geneval_metadata(diagonal)["checks"] and spec_from_metadata(geneval_metadata(diagonal)) == diagonal
    counting = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "prompt": "a photo of three cats"}
    assert spec_from_metadata(counting) is None


def test_read_prompt_file_accepts_geneval_promptspec_and_plain_lines(tmp_path):
    lines = [
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"},
        {"tag": "position", "include": [{"class": "kite", "count": 1},
                                        {"class": "wine glass", "count": 1, "position": ["above", 0]}],
         "prompt": "a photo of a wine glass above a kite"},
        PromptSpec("a cat below a dog", (RelationCheck("cat", "below", "dog"),), tag="mine").to_dict(),
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    specs, skipped = read_prompt_file(path)
    assert skipped == 1
    assert [(s.prompt, s.tag, s.checks) for s in specs] == [
        ("a photo of a wine glass above a kite", "position", (RelationCheck("wine glass", "above", "kite"),)),
        ("a cat below a dog", "mine", (RelationCheck("cat", "below", "dog"),))]

    text = tmp_path / "spatial.txt"
    text.write_text("a bird on the left of a bear\na cat next to a dog\na red car\n")
    specs, skipped = read_prompt_file(text)
    assert skipped == 1
    assert [s.checks for s in specs] == [(RelationCheck("bird", "left of", "bear"),),
                                         (RelationCheck("cat", "next to", "dog"),)]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "checks": [{"subject": "a", "relation": "left of"}]}\n')
    with pytest.raises(L2SError, match="bad.jsonl:1"):
        read_prompt_file(bad)


def test_a_bad_plain_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat above a dog\n\na red circle to the left of\n")
    with pytest.raises(L2SError, match=r"prompts.txt:3 \('a red circle to the left of'\): relation 'to the left of' "
                                       r"at character 13 has no object after it"):
        read_prompt_file(path)


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path, name):
    spec = PromptSpec("a cat above a dog", (RelationCheck("cat", "above", "dog"),), tag="spatial")
    path = tmp_path / name
    text = json.dumps(spec.to_dict()) if name.endswith(".jsonl") else spec.prompt
    path.write_text(text + "\r\n", encoding="utf-8-sig")
    assert read_prompt_file(path) == ([spec], 0)
