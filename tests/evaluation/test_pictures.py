"""Pictures of steering: the probability plot (step axis, a curve per image) and the attention grids."""
import numpy as np
import torch
from PIL import Image

from l2s.evaluation import probability_plot
from l2s.evaluation.attention_pictures import (
    attention_grid,
    heat_colours,
    save_attention_grids,
)
from l2s.pipelines.attention_maps import StepMaps
from l2s.steer import IterationRecord


def _pixels_of(image, colour, tolerance=30):
    pixels = np.asarray(image).astype(int)
    return (np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).sum()


def test_probability_plot_has_a_curve_per_image_and_a_step_axis():
    records = [IterationRecord(step=s, iteration=k, relation=0, loss=[1.0, 1.0],
                               target_probability=[0.1 + 0.1 * k + 0.2 * s, 0.9 - 0.1 * k], updated=True)
               for s in (0, 1, 2) for k in range(3)]
    image = probability_plot(records)
    assert image.size == (480, 260)
    assert _pixels_of(image, (220, 40, 40), 10) > 30 and _pixels_of(image, (40, 80, 220), 10) > 30
    # Every other step's iterations are shaded; one image's plot has no second colour.
    assert _pixels_of(image, (244, 244, 250), 0) > 1000
    one = [IterationRecord(r.step, r.iteration, 0, [1.0], r.target_probability[:1], True) for r in records]
    assert _pixels_of(probability_plot(one), (40, 80, 220), 10) == 0
    assert np.asarray(probability_plot([])).std() > 0      # axes even with no records


def test_heat_colours_run_dark_to_bright():
    colours = heat_colours(np.linspace(0, 1, 5))
    assert colours.shape == (5, 3) and (np.diff(colours.sum(axis=1)) > 0).all()


def test_attention_grid_puts_each_objects_map_where_it_attends(tmp_path):
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    before = np.zeros((2, 4, 4), np.float32)
    after = np.zeros((2, 4, 4), np.float32)
    before[0, :, :2], after[0, :, 2:] = 1.0, 1.0   # object 0 moves from the left half to the right
    before[1], after[1] = 0.5, 0.5
    grid = attention_grid(image, 3, ["red cat", "dog"], before, after, note="p 0.2 -> 0.9", cell=64)
    pixels = np.asarray(grid).astype(int)
    x0, y0 = 96 + 8, 34 + 16                        # label column + pad, title + headings
    left_before = pixels[y0 + 20, x0 + 64 + 8 + 10].sum()
    right_before = pixels[y0 + 20, x0 + 64 + 8 + 54].sum()
    left_after = pixels[y0 + 20, x0 + 2 * (64 + 8) + 10].sum()
    assert left_before > right_before and left_after < left_before
    steps = [StepMaps(0, ["red cat", "dog"], torch.tensor(before)[None], torch.tensor(after)[None])]
    paths = save_attention_grids(image, steps, tmp_path / "maps")
    assert [p.name for p in paths] == ["step_00.png"]
    with Image.open(paths[0]) as saved:
        assert saved.size == attention_grid(image, 0, ["red cat", "dog"], before, after).size


def test_side_by_side_enlarges_small_images_and_keeps_left_and_right():
    from PIL import Image

    from l2s.evaluation import side_by_side

    left, right = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    sheet = side_by_side(left, right, min_side=256)
    assert sheet.height > 256 and sheet.width > 2 * 256     # enlarged 8x, plus margins and labels
    assert sheet.getpixel((8 + 128, sheet.height // 2)) == (255, 0, 0)
    assert sheet.getpixel((sheet.width - 8 - 128, sheet.height // 2)) == (0, 0, 255)


def test_contact_sheet_draws_small_and_large_images_at_one_size(tmp_path):
    from l2s.evaluation import contact_sheet
    from l2s.evaluation.specs import ImageResult

    small, large = Image.new("RGB", (32, 32), (200, 0, 200)), Image.new("RGB", (512, 512), (0, 0, 200))
    results = [ImageResult(True, 1.0, "ok", [], {}, prompt=p) for p in ("small", "large")]
    sheet = Image.open(contact_sheet([small, large], results, tmp_path / "sheet.png", columns=2))
    border, cell_w = 4, 256 + 8
    assert sheet.getpixel((border + 250, border + 250)) == (200, 0, 200)   # not shrunk to 16 px by the large one
    assert sheet.getpixel((cell_w + border + 250, border + 250)) == (0, 0, 200)


def test_every_png_l2s_writes_goes_through_save_png():
    # one writer (evaluation.records.save_png, atomic), not a copy of its three lines per picture
    from pathlib import Path

    import l2s

    package = Path(l2s.__file__).parent
    encoders = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                      if 'format="PNG"' in path.read_text(encoding="utf-8"))
    assert encoders == ["evaluation/records.py"]
