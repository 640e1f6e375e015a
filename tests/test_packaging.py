"""What the wheel ships: the package with its kernels/engines subpackages and the shapes model, and
nothing of the research material (bench/, experiments/, the model's history).

The wheel is built from a copy of the packaged sources with ``L2S_SKIP_NATIVE=1`` (no CMake
build), so this takes seconds; the files it lists are the ones a full build ships beside
``l2s_fast``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "l2s" / "shapes" / "assets"
LINKED = ("kernels", "engines")  # top-level folders that l2s/<name> links to

pytestmark = pytest.mark.skipif(
    not (ROOT / "setup.py").is_file() or importlib.util.find_spec("setuptools") is None
    or importlib.util.find_spec("wheel") is None,
    reason="needs a source checkout with setuptools and wheel",
)


def _package_modules(folder: Path) -> set[str]:
    """Relative paths of the .py files setuptools packages from ``folder`` (dirs with __init__.py)."""
    found = set()
    for path in folder.rglob("*.py"):
        parents = path.relative_to(folder).parents
        if all((folder / p / "__init__.py").is_file() for p in parents):
            found.add(path.relative_to(folder).as_posix())
    return found


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> dict[str, bytes]:
    """Build the wheel from a clean copy (a build/ folder in the checkout may hold stale files)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("l2s", *LINKED):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    out = tmp / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "-w", str(out), str(src)],
        env={**os.environ, "L2S_SKIP_NATIVE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("l2s-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


@pytest.mark.parametrize("name", LINKED)
def test_linked_subpackages_resolve(name):
    link = ROOT / "l2s" / name
    assert link.is_dir() and (link / "__init__.py").is_file()
    assert link.resolve() == (ROOT / name).resolve()


@pytest.mark.parametrize("name", LINKED)
def test_wheel_ships_linked_subpackages_as_files(wheel_names, name):
    modules = _package_modules(ROOT / name)
    assert "__init__.py" in modules
    for module in modules:
        shipped = f"l2s/{name}/{module}"
        assert shipped in wheel_names, f"{shipped} missing from the wheel"
        assert wheel_names[shipped] == (ROOT / name / module).read_bytes()


def test_wheel_ships_the_shapes_model(wheel_names):
    required = ["TRAINING.md", "model_index.json", "scheduler/scheduler_config.json",
                "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json",
                "classifier/config.json", "classifier/model.safetensors",
                "classifier_pos_only/config.json", "classifier_pos_only/model.safetensors"]
    for name in required:
        assert f"l2s/shapes/assets/{name}" in wheel_names, name
    on_disk = {p.relative_to(ROOT).as_posix() for p in ASSETS.rglob("*") if p.is_file()}
    assert on_disk <= set(wheel_names)


def test_wheel_ships_no_research_material(wheel_names):
    allowed_tops = ("l2s/", "l2s-")
    for name in wheel_names:
        assert name.startswith(allowed_tops), f"{name}: outside the package"
        assert not name.startswith(("l2s/bench", "l2s/experiments", "l2s/tests", "l2s/docs")), name
    markdown = sorted(name for name in wheel_names if name.endswith(".md"))
    assert markdown == ["l2s/shapes/assets/TRAINING.md"]  # one short TRAINING.md, no history notebook
    assets = [name for name in wheel_names if name.startswith("l2s/shapes/assets/")]
    assert not [name for name in assets if Path(name).name.startswith(("training", "README"))
                and name != "l2s/shapes/assets/TRAINING.md"]


def test_wheel_names_no_machine_folders(wheel_names):
    for name, data in wheel_names.items():
        if name.endswith((".py", ".md", ".json", ".txt")):
            assert b"/work/" not in data, f"{name} names a machine folder"
