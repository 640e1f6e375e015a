"""Training curves drawn as a picture."""
import math

import numpy as np

from l2s.evaluation.curves import PANEL_SIZE, curves_picture
from l2s.evaluation.pictures import LINE_COLOURS


def _colour_count(image, colour) -> int:
    return int(np.all(np.asarray(image.convert("RGB")) == colour, axis=-1).sum())


def test_each_key_is_a_curve_in_its_colour_and_gaps_are_left_out():
    rows = [{"epoch": e, "loss": 1 / e, "val": 0.5 + e / 100 if e % 4 == 0 else None} for e in range(1, 21)]
    rows.append({"epoch": 21, "loss": math.nan, "val": True})     # neither a finite number: not drawn
    image = curves_picture(rows, [("loss", ["loss", "val"]), ("nothing", ["kl"])], "a run")
    assert image.size == (2 * PANEL_SIZE[0], PANEL_SIZE[1] + 22)
    left = image.crop((0, 40, PANEL_SIZE[0], PANEL_SIZE[1]))
    right = image.crop((PANEL_SIZE[0], 40, 2 * PANEL_SIZE[0], PANEL_SIZE[1]))
    assert _colour_count(left, LINE_COLOURS[0]) > 200 and _colour_count(left, LINE_COLOURS[1]) > 50
    assert _colour_count(right, LINE_COLOURS[0]) == 0      # a key never logged draws nothing


def test_a_constant_series_and_a_single_epoch_still_draw():
    image = curves_picture([{"epoch": 3, "a": 0.0}], [("a", ["a"])], "one epoch")
    assert _colour_count(image, LINE_COLOURS[0]) > 10


def test_a_constant_small_value_keeps_a_scale_of_its_own():
    from l2s.evaluation.curves import _span

    low, high = _span([3e-4, 3e-4])          # a learning rate that never changed
    assert 0 < low < 3e-4 < high < 1e-3     # not a band of +-0.5 around it
    assert _span([0.0]) == (-0.5, 0.5)
