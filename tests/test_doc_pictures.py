"""scripts/doc_pictures.py: the pictures of docs/usage.md, written wherever --out says."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "doc_pictures.py"


def _doc_pictures():
    spec = importlib.util.spec_from_file_location("l2s_doc_pictures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_png_writes_outside_the_checkout(tmp_path, capsys):
    # --out /tmp/pictures once crashed after the work was done: the path was named relative to the checkout
    path = tmp_path / "probability.png"
    _doc_pictures().small_png(Image.new("RGB", (8, 8), "red"), path, colours=4)
    assert path.is_file()
    assert capsys.readouterr().out.startswith(f"{path}: ")


def test_small_png_names_a_relative_out_inside_the_checkout(tmp_path, monkeypatch, capsys):
    # --out docs/img (relative, run from the checkout) crashed after writing: a relative path has no relative_to
    module = _doc_pictures()
    monkeypatch.setattr(module, "ROOT", tmp_path.resolve())   # resolved, as the script's own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    module.small_png(Image.new("RGB", (8, 8), "red"), Path("img") / "probability.png", colours=4)
    assert capsys.readouterr().out.startswith("img/probability.png: ")
