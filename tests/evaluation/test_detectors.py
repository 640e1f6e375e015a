"""Detector plumbing: connected components, CLIPSeg masks, best boxes, and the transformers detectors."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from l2s.errors import ModelLoadError
from l2s.evaluation import (
    Detection,
    TransformersDetector,
    best_detection_per_label,
    clipseg_mask_to_box,
    label_components,
)


def test_label_components_counts_4_and_8_connected_blobs():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True          # diagonal neighbours: one blob at 8, two at 4
    mask[4:6, 3:6] = True
    labels, count = label_components(mask, 8)
    assert count == 2 and labels[0, 0] == labels[1, 1] != labels[5, 5] and labels[3, 3] == 0
    assert label_components(mask, 4)[1] == 3
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        label_components(mask, 6)


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
