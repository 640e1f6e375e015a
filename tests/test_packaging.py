"""Packaging: the sdist carries the native sources and the licence; a wheel built from it with build
isolation (as `pip install .`, `pip install git+...` and uv build) compiles ``l2s_fast`` and ships the
package, its kernels/engines subpackages and the shapes model, nothing of the research material;
the wheel installs into a fresh virtual environment and its ``l2s`` command runs there.

The sdist is built in-process (seconds). The isolated build fetches setuptools, pybind11 and cmake
from pip's configured index (PyPI or a local mirror) and compiles ``l2s_fast``: ~30 s on 2 cores.
"""
from __future__ import annotations

import email
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "l2s" / "shapes" / "assets"
LINKED = ("kernels", "engines")  # top-level folders that l2s/<name> links to
SHIPPED_CLASSIFIER_DIRS = ("classifier", "classifier_pos_only", "classifier_k4")
SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "requirements.txt",
           "CMakeLists.txt", "csrc", "l2s", *LINKED)
PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# What runs in the fresh venv: a PYTHONPATH naming the checkout would import it instead of the wheel.
VENV_ENV = {name: value for name, value in PIP_ENV.items() if name != "PYTHONPATH"}
# Only these may be required by a plain `pip install l2s`; the rest belongs in extras.
RUNTIME = {"torch", "diffusers", "transformers", "tokenizers", "huggingface-hub", "safetensors",
           "sentencepiece", "spacy", "scipy", "numpy", "pillow", "tqdm"}
EXTRAS = {"triton", "onnx", "tensorrt", "train", "test", "dev"}

pytestmark = pytest.mark.skipif(
    not (ROOT / "setup.py").is_file() or importlib.util.find_spec("setuptools") is None,
    reason="needs a source checkout with setuptools",
)


def _package_modules(folder: Path) -> set[str]:
    """Relative paths of the .py files setuptools packages from ``folder`` (dirs with __init__.py)."""
    found = set()
    for path in folder.rglob("*.py"):
        parents = path.relative_to(folder).parents
        if all((folder / p / "__init__.py").is_file() for p in parents):
            found.add(path.relative_to(folder).as_posix())
    return found


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


def _copy_sources(src: Path) -> Path:
    """A clean copy of the sources in ``src`` (a build/ folder in the checkout may hold stale files)."""
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist of a clean copy of the sources."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = _copy_sources(tmp / "src")
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp)!r})"],
         cwd=src)
    (archive,) = tmp.glob("l2s-*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def sdist_names(sdist) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> Path:
    """The wheel pip builds from the sdist with build isolation (the build requirements of
    pyproject.toml in a fresh environment, no torch), compiling l2s_fast."""
    out = tmp_path_factory.mktemp("wheel")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(out / "probe"),
                            "setuptools>=77"], capture_output=True, text=True, timeout=300, env=PIP_ENV)
    if probe.returncode != 0:
        pytest.skip("pip reaches no package index for the build requirements (setuptools, pybind11, cmake): "
                    + (probe.stderr.strip().splitlines() or ["?"])[-1])
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(sdist)], env=PIP_ENV)
    (built,) = out.glob("l2s-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


def _metadata(wheel_names) -> email.message.Message:
    (name,) = [n for n in wheel_names if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel_names[name])


# ---- the sources and their metadata -----------------------------------------------------------------


def test_sdist_carries_native_sources_licence_and_no_research(sdist_names):
    for name in ("CMakeLists.txt", "LICENSE", "setup.py", "pyproject.toml", "csrc/module.cpp",
                 "csrc/selected_text_softmax_cpu.cpp", "csrc/build_config.h.in", "l2s/kernels/__init__.py",
                 "l2s/engines/__init__.py", "l2s/shapes/assets/classifier/config.json"):
        assert name in sdist_names, name
    assert not [n for n in sdist_names if n.split("/")[0] in ("tests", "experiments", "bench", "docs")]


def test_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_requirements_pin_the_cpu_torch_and_agree_with_the_metadata():
    """requirements.txt never pulls a CUDA torch, the scripts install torch from the CPU index, and
    every dependency of l2s and of its extras (but tensorrt) is pinned inside its declared range."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"platform_system": "Linux"}):
                pins[requirement.name.lower()] = requirement
    torch_pin = str(pins["torch"].specifier)
    assert torch_pin.endswith("+cpu"), torch_pin
    for script in ("demo.sh", "test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        install = r'"torch==' + re.escape(torch_pin[2:-4]) + r'" --index-url https://download\.pytorch\.org/whl/cpu'
        assert re.search(install, text), script
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS - {"tensorrt"}:
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for requirement in declared:
        if requirement.name == "l2s":
            continue
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in requirements.txt"
        version = str(pins[name].specifier).lstrip("=")
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version} vs {requirement}"


def test_wheel_from_a_working_checkout_leaves_its_stray_files(tmp_path):
    """`pip install .` builds the wheel straight from the checkout, not from the sdist: the caches and
    interrupted-run files that MANIFEST.in keeps out of the sdist stay out of the wheel too."""
    src = _copy_sources(tmp_path / "src")
    assets = src / "l2s" / "shapes" / "assets"
    strays = ["__pycache__/model.cpython-311.pyc", "classifier/notes.pyc", "run.partial.jsonl", "helper.so"]
    for stray in strays:
        (assets / stray).parent.mkdir(parents=True, exist_ok=True)
        (assets / stray).write_text("stray")
    out = tmp_path / "wheel"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"],
         cwd=src, env={**PIP_ENV, "L2S_SKIP_NATIVE": "1"})   # the packaged files alone, no compiler
    (built,) = out.glob("l2s-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    assert "l2s/shapes/assets/classifier/config.json" in names
    assert not [name for name in names if name.endswith(tuple(strays))]


# ---- the wheel built with build isolation ------------------------------------------------------------


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


def test_wheel_ships_the_native_module_and_licence(wheel_names):
    assert [n for n in wheel_names if re.fullmatch(r"l2s_fast\.[^/]+\.so", n)]
    assert [n for n in wheel_names if n.endswith(".dist-info/licenses/LICENSE")]


def test_wheel_metadata_minimal_runtime_and_extras(wheel_names):
    from packaging.requirements import Requirement

    metadata = _metadata(wheel_names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    runtime = {Requirement(r).name.lower() for r in metadata.get_all("Requires-Dist")
               if "extra ==" not in r}
    assert runtime == RUNTIME
    assert EXTRAS <= set(metadata.get_all("Provides-Extra"))


def test_wheel_ships_the_shapes_model(wheel_names):
    required = ["TRAINING.md", "model_index.json", "scheduler/scheduler_config.json",
                "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json",
                *[f"{folder}/{name}" for folder in SHIPPED_CLASSIFIER_DIRS
                  for name in ("config.json", "model.safetensors", "training.json")],
                "spatial_score/config.json", "spatial_score/model.safetensors", "spatial_score/tokenizer/tokenizer.json",
                "grpo_adapter/adapter_config.json", "grpo_adapter/adapter_model.safetensors"]
    for name in required:
        assert f"l2s/shapes/assets/{name}" in wheel_names, name
    on_disk = {p.relative_to(ROOT).as_posix() for p in ASSETS.rglob("*") if p.is_file()}
    assert on_disk <= set(wheel_names)


def test_wheel_ships_no_research_material(wheel_names):
    for name in wheel_names:
        assert name.startswith(("l2s/", "l2s-")) or re.fullmatch(r"l2s_fast\.[^/]+\.so", name), \
            f"{name}: outside the package"
        assert not name.startswith(("l2s/bench", "l2s/experiments", "l2s/tests", "l2s/docs")), name
    markdown = sorted(name for name in wheel_names if name.endswith(".md"))
    assert markdown == ["l2s/shapes/assets/TRAINING.md"]  # one short TRAINING.md, no history notebook
    assets = [name for name in wheel_names if name.startswith("l2s/shapes/assets/")]
    # The classifiers' own records (the model whose maps trained them) are no research notes.
    records = {"l2s/shapes/assets/TRAINING.md", *(f"l2s/shapes/assets/{folder}/training.json"
                                                  for folder in SHIPPED_CLASSIFIER_DIRS)}
    assert not [name for name in assets if Path(name).name.startswith(("training", "README")) and name not in records]


def test_wheel_names_no_machine_folders(wheel_names):
    for name, data in wheel_names.items():
        if name.endswith((".py", ".md", ".json", ".txt")):
            assert b"/work/" not in data, f"{name} names a machine folder"


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    """A venv that sees this environment's packages (torch and the rest, so nothing is downloaded)
    gets the wheel; its own l2s, l2s_fast and `l2s` command are the ones that run."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python, command = venv / "bin" / "python", venv / "bin" / "l2s"
    # --force-reinstall: this environment may hold an editable l2s of the same version.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
          "--force-reinstall", str(wheel)], env=PIP_ENV)
    check = ("import importlib.metadata as m, l2s, l2s_fast, l2s.kernels\n"
             "from packaging.requirements import Requirement\n"
             "for r in map(Requirement, m.requires('l2s')):\n"
             "    if r.marker is None:\n"
             "        assert r.specifier.contains(m.version(r.name), prereleases=True), (r, m.version(r.name))\n"
             "print(l2s.__file__, l2s_fast.__file__, l2s.kernels.__file__)")
    paths = _run([str(python), "-c", check], cwd=tmp_path, env=VENV_ENV).stdout.split()
    assert len(paths) == 3 and all(p.startswith(str(venv)) for p in paths), paths
    assert _run([str(command), "--version"], cwd=tmp_path, env=VENV_ENV).stdout.strip() == f"l2s {_version()}"
    assert _run([str(python), "-m", "l2s", "--help"], cwd=tmp_path, env=VENV_ENV).stdout.startswith("usage: l2s")


def _version() -> str:
    return re.search(r'__version__ = "([^"]+)"', (ROOT / "l2s" / "__init__.py").read_text()).group(1)
