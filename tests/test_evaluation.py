"""Evaluation rules, prompt sets, scoring, run reports and detector glue."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from l2s.errors import L2SError, ModelLoadError, UnsupportedRelationError
from l2s.evaluation import (
    COCO_CLASSES,
    L2S_COCO_OBJECTS,
    MIXED_OBJECTS,
    MULTI_RELATION_PATTERNS,
    OOD_OBJECTS,
    Detection,
    PromptSpec,
    RelationCheck,
    TransformersDetector,
    best_detection_per_label,
    box_iou,
    clipseg_mask_to_box,
    contact_sheet,
    evaluate_images,
    geneval_position_prompts,
    geneval_relations,
    PairedComparison,
    label_components,
    multi_relation_prompts,
    normalise_relation,
    paired_comparison,
    score_image,
    t2i_compbench_image_score,
    t2i_compbench_scale,
    t2i_compbench_score,
    with_article,
)
from l2s.evaluation.scoring import _label_components_numpy
from l2s.shapes import ShapesDetector, render, scene_for_relation


# ---------------------------------------------------------------- GenEval rule

def test_geneval_axis_relations_and_their_mirror():
    a, b = (0, 0, 10, 10), (30, 0, 40, 10)
    assert geneval_relations(a, b) == {"left of"}
    assert geneval_relations(b, a) == {"right of"}
    assert geneval_relations((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
    assert geneval_relations((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}


def test_geneval_identical_centres_give_no_relation():
    assert geneval_relations((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    assert geneval_relations((0, 0, 10, 10), (-20, -20, 30, 30)) == set()  # nested, same centre


def test_geneval_offset_inside_margin_is_no_relation():
    # |offset| = 2 equals the margin 0.1 * (10 + 10): shrunk to exactly 0 on x, and y is 0
    assert geneval_relations((0, 0, 10, 10), (2, 0, 12, 10)) == set()
    # at the boundary on x only, a big y offset remains: purely "above"
    assert geneval_relations((0, 0, 10, 10), (2, 30, 12, 40)) == {"above"}


def test_geneval_overlapping_boxes():
    # overlap, shrunk dx = -1/5: no relation
    assert geneval_relations((0, 0, 20, 20), (5, 0, 25, 20)) == set()
    # overlap but centres far enough apart: dx = -(14 - 4)/14 ≈ -0.71
    assert geneval_relations((0, 0, 20, 20), (14, 0, 34, 20)) == {"left of"}


def test_geneval_threshold_is_strict():
    # offset (-4, 3), norm 5; shrunk x = -(4 - 0.1 * (5 + 10)) = -2.5 -> dx exactly -0.5
    assert geneval_relations((0, 0, 5, 10), (1.5, -3, 11.5, 7)) == set()
    assert geneval_relations((0, 0, 5, 10), (1.6, -3, 11.6, 7)) == {"left of"}


def test_geneval_diagonal_adds_both_axes_and_the_diagonal():
    assert geneval_relations((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above", "top-left of"}
    assert geneval_relations((30, 30, 40, 40), (0, 0, 10, 10)) == {"right of", "below", "bottom-right of"}
    assert geneval_relations((30, 0, 40, 10), (0, 30, 10, 40)) == {"right of", "above", "top-right of"}


def test_geneval_margin_parameter():
    a, b = (0, 0, 10, 10), (12, 0, 22, 10)  # offset 12
    assert geneval_relations(a, b) == {"left of"}
    assert geneval_relations(a, b, margin=0.6) == set()  # 12 - 0.6 * 20 = 0


# ---------------------------------------------------------------- T2I-CompBench rule

def test_t2i_directional_sign_and_dominant_axis():
    a, b = (0, 0, 10, 10), (20, 30, 30, 40)  # B is right of and below A; y dominates
    assert t2i_compbench_score("left of", a, b) == 0.0  # right sign but x not dominant
    assert t2i_compbench_score("above", a, b) == 1.0
    assert t2i_compbench_score("on the top of", a, b) == 1.0
    assert t2i_compbench_score("below", a, b) == 0.0  # wrong sign
    assert t2i_compbench_score("on the left of", (0, 0, 10, 10), (40, 5, 50, 15)) == 1.0
    assert t2i_compbench_score("right of", (40, 5, 50, 15), (0, 0, 10, 10)) == 1.0
    assert t2i_compbench_score("on the bottom of", (0, 40, 10, 50), (0, 0, 10, 10)) == 1.0
    assert t2i_compbench_score("left of", (0, 0, 10, 10), (10, 10, 20, 20)) == 0.0  # |dx| == |dy|


def test_t2i_iou_soft_score():
    a, b = (0, 0, 20, 10), (10, 0, 30, 10)  # IoU = 100 / 300
    assert box_iou(a, b) == pytest.approx(1 / 3)
    assert t2i_compbench_score("left of", a, b) == pytest.approx(0.3)
    # IoU just under 0.1 scores fully
    c, d = (0, 0, 100, 10), (82, 0, 182, 10)  # 18 / 182 ≈ 0.0989
    assert box_iou(c, d) < 0.1 and t2i_compbench_score("left of", c, d) == 1.0


def test_t2i_non_directional_distance_rule_and_resize():
    a, b = (0, 0, 10, 10), (200, 200, 210, 210)
    assert t2i_compbench_score("next to", a, b) == pytest.approx(0.75)
    assert t2i_compbench_score("near", a, (200, 100, 210, 110)) == 1.0  # |dy| = 100 < 150
    assert t2i_compbench_score("on side of", a, b, image_size=(1024, 1024)) == 1.0  # 200 * 479/1024 < 150
    assert t2i_compbench_score("next to", a, b, image_size=(240, 240)) == pytest.approx(150 / (200 * 479 / 240))
    assert t2i_compbench_scale((512, 512)) == pytest.approx(479 / 512)
    assert t2i_compbench_scale((1000, 500)) == pytest.approx(480 / 1000)  # longer side capped


def test_t2i_rejects_diagonals_and_unknown_words():
    with pytest.raises(UnsupportedRelationError):
        t2i_compbench_score("top-left of", (0, 0, 1, 1), (2, 2, 3, 3))
    with pytest.raises(UnsupportedRelationError):
        normalise_relation("inside")
    with pytest.raises(UnsupportedRelationError):
        normalise_relation("is")
    assert normalise_relation("To the Left of") == "left of"
    assert normalise_relation("on top of") == "above"


def test_t2i_image_score():
    a, b = Detection("cat", (0, 0, 10, 10), 0.9), Detection("dog", (40, 0, 50, 10), 0.8)
    assert t2i_compbench_image_score("left of", a, b) == pytest.approx(0.925)
    assert t2i_compbench_image_score("right of", a, b) == 0.0  # 0.425 < 0.5
    assert t2i_compbench_image_score("left of", a, None) == 0.0  # 0.225 < 0.5
    overlap = Detection("dog", (5, 0, 15, 10), 1.0)  # IoU 1/3, soft position 0.3
    a1 = Detection("cat", (0, 0, 10, 10), 1.0)
    assert t2i_compbench_image_score("left of", a1, overlap) == pytest.approx(0.5 + 0.15)
    assert t2i_compbench_image_score("left of", None, None) == 0.0


# ---------------------------------------------------------------- per-image scoring

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


# ---------------------------------------------------------------- prompt sets

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


def test_prompt_spec_round_trip():
    spec = geneval_position_prompts(1, seed=4)[0]
    assert PromptSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert RelationCheck("a", "to the right of", "b").relation == "right of"


# ---------------------------------------------------------------- runs on the shapes world

def _shapes_records():
    rng = np.random.default_rng(0)
    records = []
    for k, relation in enumerate(["left of", "right of", "above", "below", "above", "left of"]):
        scene = scene_for_relation(rng, ("circle", "red"), relation, ("square", "blue"), size=48)
        claimed = "below" if k == 5 else relation  # the last prompt lies: its image must fail
        spec = PromptSpec(f"a photo of a red circle {claimed} a blue square",
                          (RelationCheck("red circle", claimed, "blue square"),), tag=f"t{k % 2}")
        records.append((render(scene), spec, {"name": f"img{k}", "seed": k}))
    return records


def test_evaluate_images_writes_results_and_summary(tmp_path):
    records = _shapes_records()
    summary = evaluate_images(records, ShapesDetector(), tmp_path)
    assert (summary.n_images, summary.n_correct) == (6, 5)
    assert summary.accuracy == pytest.approx(5 / 6)
    assert summary.per_relation["below"] == [1, 2] and summary.per_relation["left of"] == [1, 1]
    assert summary.per_tag == {"t0": [3, 3], "t1": [2, 3]}
    per_image = json.loads((tmp_path / "img5.json").read_text())
    assert per_image["correct"] is False and per_image["meta"] == {"seed": 5}
    assert per_image["checks"][0]["found"] == ["left of"]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == [f"img{k}" for k in range(6)]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["accuracy"] == pytest.approx(5 / 6)
    assert saved["n_prompts"] == 4 and saved["n_prompts_any_correct"] == 4  # repeated prompts group
    table = summary.table()
    assert "overall (images)" in table and "relation below" in table and "0.833" in table


def test_contact_sheet_draws_pass_and_fail(tmp_path):
    records = _shapes_records()
    summary = evaluate_images(records, ShapesDetector(), tmp_path / "run")
    path = contact_sheet([r[0] for r in records], summary.results, tmp_path / "sheet.png", columns=4, scale=2)
    sheet = Image.open(path)
    assert sheet.format == "PNG"
    cell_w = 48 * 2 + 8
    assert sheet.width == 4 * cell_w and sheet.height % 2 == 0
    cell_h = sheet.height // 2
    assert sheet.getpixel((1, 1)) == (0, 170, 0)  # first image passes: green border
    assert sheet.getpixel((cell_w + 1, cell_h + 1)) == (210, 0, 0)  # sixth fails: red border
    with pytest.raises(ValueError):
        contact_sheet([records[0][0]], [], tmp_path / "bad.png")


# ---------------------------------------------------------------- detector plumbing

def test_label_components_numpy_fallback_matches_scipy():
    rng = np.random.default_rng(0)
    for connectivity in (4, 8):
        mask = rng.random((30, 40)) > 0.55
        labels, count = label_components(mask, connectivity)
        fallback, fallback_count = _label_components_numpy(mask, connectivity)
        assert count == fallback_count > 1
        # same partition: a one-to-one map between the two labellings
        pairs = set(zip(labels[mask].tolist(), fallback[mask].tolist()))
        assert len(pairs) == count


def test_clipseg_mask_to_box_keeps_largest_component_and_rescales():
    probabilities = np.zeros((16, 16), np.float32)
    probabilities[4:8, 2:6] = 0.9   # 16 pixels
    probabilities[10:12, 10:12] = 0.95  # 4 pixels: smaller, ignored
    probabilities[0, 15] = 120 / 255  # exactly at the threshold: not in the mask
    box, score = clipseg_mask_to_box(probabilities, image_size=(80, 64))
    assert box == pytest.approx((2 * 5, 4 * 4, 6 * 5, 8 * 4))
    assert score == pytest.approx(0.9)
    assert clipseg_mask_to_box(np.full((8, 8), 0.4, np.float32), (8, 8)) is None


def test_best_detection_per_label_and_clipping():
    found = best_detection_per_label(["cat", "dog", "cow"], [0, 0, 1], [(1, 1, 5, 5), (-5, 2, 90, 9), (3, 3, 4, 4)],
                                     [0.4, 0.7, 0.2], image_size=(50, 40))
    assert found["cat"] == Detection("cat", (0.0, 2.0, 50.0, 9.0), 0.7)
    assert found["dog"].score == pytest.approx(0.2) and found["cow"] is None


def test_transformers_detector_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no detector checkpoint"):
        TransformersDetector(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError):
        TransformersDetector(tmp_path)


def _clip_tokenizer(directory):
    """A character-level CLIP tokenizer built in code (no downloads)."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                         model_max_length=32, pad_token="!"), vocab


def _tiny_text_vision(vocab):
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2,
                num_hidden_layers=2, max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
    vision = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                  num_hidden_layers=2)
    return text, vision


@pytest.fixture(scope="module")
def tiny_owlvit(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    directory = tmp_path_factory.mktemp("owlvit")
    tokenizer, vocab = _clip_tokenizer(directory)
    text, vision = _tiny_text_vision(vocab)
    torch.manual_seed(0)
    config = OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)
    OwlViTForObjectDetection(config).save_pretrained(directory)
    size = {"height": 32, "width": 32}
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size),
                    tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    directory = tmp_path_factory.mktemp("clipseg")
    tokenizer, vocab = _clip_tokenizer(directory)
    text, vision = _tiny_text_vision(vocab)
    torch.manual_seed(0)
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, extract_layers=[1],
                           reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16)
    CLIPSegForImageSegmentation(config).save_pretrained(directory)
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                     tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_owl_detector_glue(tiny_owlvit):
    import torch

    detector = TransformersDetector(tiny_owlvit, threshold=0.0)
    assert detector.family == "owl"
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    real = detector.detect(image, ["red circle", "dog", "dog"])  # random weights: shapes only
    assert set(real) == {"red circle", "dog"}
    for det in filter(None, real.values()):
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 60 and 0 <= det.score <= 1
    # Known logits: 3 predicted boxes x 2 queries; box 1 is the best "dog", box 2 the best "cat".
    logits = torch.tensor([[[3.0, -9.0], [-9.0, 2.0], [-9.0, 4.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.1, 0.4], [0.75, 0.25, 0.5, 0.5]]])  # cx, cy, w, h
    detector.model = lambda **_: SimpleNamespace(logits=logits, pred_boxes=boxes)
    found = detector.detect(image, ["cat", "dog"])
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert found["cat"].box == pytest.approx((32, 24, 48, 36)) and found["cat"].score == pytest.approx(sigmoid(3.0))
    assert found["dog"].box == pytest.approx((40, 0, 80, 30)) and found["dog"].score == pytest.approx(sigmoid(4.0))
    detector.threshold = 0.99
    assert detector.detect(image, ["cat", "dog"]) == {"cat": None, "dog": None}


def test_clipseg_detector_glue(tiny_clipseg):
    import torch

    detector = TransformersDetector(tiny_clipseg, mask_threshold=0)
    assert detector.family == "clipseg"
    image = Image.new("RGB", (80, 64), (200, 30, 30))
    assert set(detector.detect(image, ["cat"])) == {"cat"}  # a real forward runs
    logits = torch.full((2, 16, 16), -10.0)
    logits[0, 4:8, 2:6] = 5.0
    logits[1, 0:2, 0:16] = 5.0
    detector.mask_threshold = 120
    detector.model = lambda **inputs: SimpleNamespace(logits=logits[: inputs["input_ids"].shape[0]])
    found = detector.detect(image, ["cat", "dog"])
    assert found["cat"].box == pytest.approx((10, 16, 30, 32))
    assert found["dog"].box == pytest.approx((0, 0, 80, 8))
    detector.model = lambda **_: SimpleNamespace(logits=logits[1])  # one query: CLIPSeg drops the batch axis
    assert detector.detect(image, ["dog"])["dog"].box == pytest.approx((0, 0, 80, 8))


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from transformers import (
        BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig,
    )

    directory = tmp_path_factory.mktemp("gdino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "red", "circle", "dog"]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    backbone = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                          window_size=2, out_features=["stage1", "stage2"])
    text = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        num_queries=5, num_feature_levels=2, encoder_n_points=1, decoder_n_points=1, max_text_len=32,
        use_timm_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(directory)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 32}),
                           tokenizer=BertTokenizer(str(directory / "vocab.txt"))).save_pretrained(directory)
    return directory


def test_grounding_dino_detector_glue(tiny_grounding_dino):
    detector = TransformersDetector(tiny_grounding_dino, threshold=0.0)
    assert detector.family == "grounding_dino"
    calls = []
    model = detector.model
    detector.model = lambda **inputs: calls.append(inputs["input_ids"]) or model(**inputs)
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    found = detector.detect(image, ["red circle", "dog"])
    assert len(calls) == 2  # one query per label: every returned box belongs to it
    for label, det in found.items():
        assert det is not None and det.label == label
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 60 and 0 <= det.score <= 1


def test_paired_comparison_counts_only_shared_images_and_discordant_pairs():
    a = {"0/1": True, "0/2": True, "1/1": False, "1/2": True, "9/9": True}
    b = {"0/1": True, "0/2": False, "1/1": True, "1/2": False}
    c = paired_comparison(a, b)
    assert (c.n_pairs, c.a_correct, c.b_correct, c.a_only, c.b_only) == (4, 3, 2, 2, 1)
    # 3 discordant pairs split 2:1 -> P(split at least this uneven) = 2 * (1 + 3) / 8 = 1.
    assert c.p_value == pytest.approx(1.0)
    assert not c.a_better()


def test_paired_sign_test_matches_the_binomial_tail():
    binomtest = pytest.importorskip("scipy.stats", reason="scipy gives the independent binomial tail").binomtest

    for a_only, b_only in ((10, 2), (30, 14), (5, 5), (0, 7), (40, 22)):
        c = PairedComparison(n_pairs=100, a_correct=0, b_correct=0, a_only=a_only, b_only=b_only)
        expected = binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert c.p_value == pytest.approx(expected, rel=1e-9)
    assert PairedComparison(10, 5, 5, 0, 0).p_value == 1.0
    assert PairedComparison(100, 0, 0, 12, 1).a_better()          # p ~ 0.003
    assert not PairedComparison(100, 0, 0, 1, 12).a_better()      # b is the better one
    assert not PairedComparison(100, 0, 0, 6, 2).a_better()       # p ~ 0.29: not measurable
