"""``l2s generate --save-maps``: one labelled grid per steered step, listed with the other files."""
from PIL import Image

from l2s.cli import main


def test_generate_save_maps_writes_a_grid_per_steered_step(tmp_path, capsys):
    code = main(["generate", "a cat to the left of a dog", "--model", "tiny", "--out", str(tmp_path),
                 "--quiet", "--save-maps"])
    err = capsys.readouterr().err
    assert code == 0, err
    grids = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.name for p in grids] == ["step_00.png"]             # schnell's reference: step 0 only
    assert "step_00.png" in err
    with Image.open(grids[0]) as grid:
        assert grid.width > 3 * 160 and grid.height > 2 * 160      # three columns, a row per object
