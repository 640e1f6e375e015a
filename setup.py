"""Build and install l2s: the Python package plus the native module ``l2s_fast`` (CMake + pybind11).

Install torch first (``pip install -r requirements.txt``), then::

    pip install -e . --no-build-isolation      # development
    pip install . --no-build-isolation         # regular install

Environment knobs: ``L2S_BUILD_CUDA=1`` compiles csrc/cuda/*.cu (needs nvcc);
``L2S_CUDA_ARCHS`` picks the CUDA architectures (default "80;90"); ``L2S_BUILD_TYPE``
(default Release); ``L2S_NATIVE_ARCH=1`` adds -march=native; ``L2S_SKIP_TORCH_CHECK=1``
skips the check that torch is importable; ``L2S_SKIP_NATIVE=1`` builds without ``l2s_fast`` (only to
check the packaged files quickly: the CPU path of ``l2s.ops`` needs the native module).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
TRUTHY = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


def read_version() -> str:
    """Single source of truth: ``__version__`` in l2s/__init__.py."""
    text = (ROOT / "l2s" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("l2s/__init__.py defines no __version__")
    return match.group(1)


def require_torch() -> None:
    """Fail early and clearly when torch is missing.

    torch is not in install_requires on purpose: a bare ``torch`` requirement resolved by pip
    downloads a multi-GB CUDA build. It must be installed first, from requirements.txt.
    """
    if env_flag("L2S_SKIP_TORCH_CHECK"):
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(
            "l2s needs PyTorch, which is not importable here. Install it first with "
            "`pip install -r requirements.txt` (pins torch==2.13.0), then run "
            "`pip install --no-build-isolation .` (without --no-build-isolation the build runs "
            "in an isolated environment that cannot see torch). "
            "Set L2S_SKIP_TORCH_CHECK=1 to build anyway."
        )


def find_cmake() -> str:
    """The PyPI ``cmake`` package when installed (pinned in requirements.txt), else PATH."""
    try:
        import cmake

        candidate = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("cmake")
    if found is None:
        sys.exit("CMake >= 3.18 is needed to build l2s_fast: `pip install cmake`.")
    return found


class CMakeExtension(Extension):
    """An extension whose sources are built by CMakeLists.txt rather than by setuptools."""

    def __init__(self, name: str, source_dir: Path = ROOT) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    """Configure and build each CMakeExtension, writing the module where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        require_torch()
        import pybind11

        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("L2S_BUILD_TYPE", "Debug" if self.debug else "Release")
        configure = [
            find_cmake(),
            "-S", str(ext.source_dir),
            "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output.parent}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DL2S_VERSION={read_version()}",
            f"-DL2S_WITH_CUDA={'ON' if env_flag('L2S_BUILD_CUDA') else 'OFF'}",
            f"-DL2S_NATIVE_ARCH={'ON' if env_flag('L2S_NATIVE_ARCH') else 'OFF'}",
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(
            [find_cmake(), "--build", str(build_dir), "--config", build_type, "--parallel", jobs],
            check=True,
        )
        if not output.exists():
            raise RuntimeError(f"CMake finished but did not produce {output}")


setup(
    name="l2s",
    version=read_version(),
    description=(
        "Learn-to-Steer: spatial-relation steering of text-to-image diffusion "
        "from cross-attention maps, fast"
    ),
    python_requires=">=3.10",
    # kernels/ and engines/ sit at the repository top level; l2s/kernels and l2s/engines are
    # symlinks to them, so a checkout, an editable install and a wheel all import l2s.kernels.
    packages=find_packages(include=["l2s", "l2s.*"]),
    package_data={"l2s.shapes": ["assets/**/*"]},
    include_package_data=True,
    ext_modules=[] if env_flag("L2S_SKIP_NATIVE") else [CMakeExtension("l2s_fast")],
    cmdclass={"build_ext": CMakeBuild},
    # No torch here on purpose (see require_torch); accelerate is an extra because it depends
    # on torch and would pull a CUDA build into an environment that lacks one.
    install_requires=[
        "diffusers>=0.42,<0.50",
        "transformers>=5.0,<6",
        "tokenizers>=0.23,<0.24",
        "huggingface-hub>=1.32,<3",
        "safetensors>=0.8,<1",
        "spacy>=3.8,<4",
        "tqdm>=4.66,<5",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "sentencepiece>=0.2,<1",
    ],
    extras_require={
        "engines": ["onnx>=1.17,<2", "onnxruntime>=1.20,<2", "onnxscript>=0.5,<1"],
        "accelerate": ["accelerate>=1.0,<2"],
        # GRPO fine-tuning (l2s.grpo) and --lora; like accelerate, peft depends on torch.
        "grpo": ["peft>=0.17,<1", "accelerate>=1.0,<2"],
        "test": ["pytest>=8,<10", "pytest-benchmark>=5,<6"],
    },
    entry_points={"console_scripts": ["l2s = l2s.cli:main"]},
    zip_safe=False,
)
