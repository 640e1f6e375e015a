"""Labelled relations from GQA scene graphs, COCO boxes and (image, prompt) pairs; balancing."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from l2s.training import (
    RelationSample,
    balance_samples,
    coco_samples,
    diagonal_relation,
    gqa_samples,
    prompt_pair_samples,
)


def _gqa_graphs() -> dict:
    return {
        "1": {"objects": {
            "a": {"name": "Cat", "attributes": ["white"], "relations": [
                {"name": "to the left of", "object": "b"}, {"name": "holding", "object": "b"},
                {"name": "to the left of", "object": "c"}]},
            "b": {"name": "dog", "attributes": ["metal", "furry"], "relations": [
                {"name": "to the right of", "object": "a"}, {"name": "above", "object": "e"}]},
            "c": {"name": "tree", "attributes": [], "relations": []},
            "d": {"name": "tree", "attributes": [], "relations": [{"name": "below", "object": "a"}]},
            "e": {"name": "animal", "attributes": [], "relations": [{"name": "below", "object": "b"}]},
        }},
        "2": {"objects": {
            "a": {"name": "car", "attributes": [], "relations": [{"name": "above", "object": "b"}]},
            "b": {"name": "road", "attributes": [], "relations": []},
        }},
    }


def test_gqa_samples_keep_unambiguous_spatial_relations_and_attributes():
    is_a = lambda a, b: (a, b) in {("cat", "animal"), ("dog", "animal")}  # noqa: E731
    samples = gqa_samples(_gqa_graphs(), "/gqa/images", is_a=is_a)
    got = {(s.image_id, s.subject, s.relation, s.object) for s in samples}
    # "tree" occurs twice and "animal" is a hypernym of cat and dog: all three are ambiguous in image 1.
    assert got == {("2", "car", "above", "road")}
    no_filter = {(s.subject, s.relation, s.object) for s in gqa_samples(_gqa_graphs(), "/gqa", is_a=None)}
    assert no_filter >= {("cat", "left of", "dog"), ("dog", "right of", "cat"), ("cat", "is", "white"),
                         ("dog", "is", "metal"), ("dog", "above", "animal"), ("car", "above", "road")}
    assert not any("tree" in (s, o) for s, _, o in no_filter)  # repeated category
    assert ("dog", "is", "furry") not in no_filter  # not a neutral-class attribute
    assert all(s.image == Path("/gqa/2.jpg") for s in gqa_samples(_gqa_graphs(), "/gqa", is_a=None)
               if s.image_id == "2")
    strict = gqa_samples(_gqa_graphs(), "/gqa", is_a=None, strict_images=True)
    assert {s.image_id for s in strict} == {"2"}


def test_gqa_without_wordnet_warns_and_skips_the_hypernym_filter(caplog, monkeypatch):
    import l2s.training.gqa as data

    monkeypatch.setattr(data, "wordnet_is_a", lambda: None)
    with caplog.at_level(logging.WARNING, logger="l2s.training.gqa"):
        samples = gqa_samples(_gqa_graphs(), "/gqa")
    assert "WordNet is not available" in caplog.text
    assert ("cat", "left of", "dog") in {(s.subject, s.relation, s.object) for s in samples}


def _coco() -> dict:
    def ann(image, category, box, crowd=0):
        return {"image_id": image, "category_id": category, "bbox": box, "iscrowd": crowd}

    return {
        "images": [{"id": 1, "file_name": "one.jpg"}, {"id": 2, "file_name": "two.jpg"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"},
                       {"id": 4, "name": "potted plant"}],
        "annotations": [
            ann(1, 1, [0, 40, 20, 20]), ann(1, 2, [60, 42, 20, 20]),  # cat left of dog
            ann(1, 3, [5, 5, 5, 5]), ann(1, 3, [80, 80, 5, 5]),  # two persons: not single-instance
            ann(1, 4, [10, 40, 20, 20]),  # potted plant right of the cat, but overlapping it (IoU 0.33)
            ann(2, 1, [0, 0, 20, 20]), ann(2, 2, [40, 40, 20, 20]),  # exact diagonal: cat top-left of dog
        ],
    }


def test_coco_samples_from_single_instance_boxes():
    samples = coco_samples(_coco(), "/coco")
    got = {(s.image_id, s.subject, s.relation, s.object) for s in samples}
    assert ("1", "cat", "left of", "dog") in got and ("1", "dog", "right of", "cat") in got
    assert not any("person" in (s, o) for _, s, _, o in got)
    assert not any({s, o} == {"cat", "potted plant"} for _, s, _, o in got)  # overlap discarded
    assert not any(i == "2" for i, *_ in got)  # both directions hold: not exactly one relation
    assert all(s.image == Path("/coco/one.jpg") for s in samples if s.image_id == "1")
    loose = {(s.subject, s.relation, s.object) for s in coco_samples(_coco(), "/coco", max_iou=None)}
    assert ("cat", "left of", "potted plant") in loose
    diagonal = {(s.image_id, s.subject, s.relation, s.object) for s in coco_samples(_coco(), "/coco", diagonal=True)}
    assert ("2", "cat", "top-left of", "dog") in diagonal and ("2", "dog", "bottom-right of", "cat") in diagonal
    assert not any(i == "1" and {s, o} == {"cat", "dog"} for i, s, _, o in diagonal)  # horizontal: no sector


def test_diagonal_sectors_are_45_degrees_around_the_diagonals():
    box_b = (40, 40, 60, 60)  # centre (50, 50); y grows downward

    def at(angle_deg: float):
        dx, dy = 20 * np.cos(np.radians(angle_deg)), -20 * np.sin(np.radians(angle_deg))
        return diagonal_relation((40 + dx, 40 + dy, 60 + dx, 60 + dy), box_b)

    assert at(135) == "top-left of" and at(45) == "top-right of"
    assert at(225) == "bottom-left of" and at(315) == "bottom-right of"
    assert at(135 + 22) == "top-left of" and at(135 + 23) is None and at(90) is None and at(0) is None
    assert diagonal_relation(box_b, box_b) is None


def test_prompt_pairs_use_the_parser(tmp_path, caplog):
    lines = [{"image": "a.png", "prompt": "a photo of a cat to the left of a dog"},
             {"image": "b.png", "prompt": "a cat and a dog"},
             {"image": "c.png", "prompt": "a red ball above a box", "image_id": "cee"},
             {"image": "d.png", "prompt": "a cat near a dog"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level(logging.WARNING, logger="l2s.training.sources"):
        samples = prompt_pair_samples(path, tmp_path)
    assert [(s.image_id, s.subject, s.relation, s.object) for s in samples] == [
        ("a", "cat", "left of", "dog"), ("cee", "red ball", "above", "box")]
    assert samples[0].image == tmp_path / "a.png"
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {path} line 2 (b): skipped: no spatial relation found in 'a cat and a dog'",
        # the words 'l2s generate' uses for the same prompt (ParsedPrompt.unsteered_reason)
        f"warning: {path} line 4 (d): skipped: no directional relation found (non-directional, not steered: cat "
        "near dog) in 'a cat near a dog'",
        "warning: 2 of 4 pairs skipped before inversion (the lines above say why)"]


def test_balance_prefers_distinct_images():
    samples = [RelationSample(f"i{i % 3}", "x", f"o{i}", "above", "y") for i in range(9)]
    samples += [RelationSample("j", "x", "o", "below", "y")]
    kept = balance_samples(samples, 3, seed=0)
    above = [s for s in kept if s.relation == "above"]
    assert len(above) == 3 and {s.image_id for s in above} == {"i0", "i1", "i2"}
    assert [s.relation for s in kept].count("below") == 1
    assert kept == balance_samples(samples, 3, seed=0)
