"""The geometric rules: GenEval's relative_position and T2I-CompBench's determine_position."""
import pytest

from l2s.errors import UnsupportedRelationError
from l2s.evaluation import (
    Detection,
    box_iou,
    geneval_relations,
    normalise_relation,
    t2i_compbench_image_score,
    t2i_compbench_scale,
    t2i_compbench_score,
)


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
