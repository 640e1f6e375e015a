"""The native module ``l2s_fast`` (C++/pybind11, built by CMake); the metadata is in pyproject.toml.

    pip install .                              # build isolation fetches setuptools, pybind11, cmake
    pip install -e . --no-build-isolation      # development, with those installed (requirements.txt)

``l2s_fast`` takes numpy arrays and does not link libtorch, so the build needs no torch.
Environment knobs: ``L2S_BUILD_CUDA=1`` compiles csrc/cuda/*.cu (needs nvcc);
``L2S_CUDA_ARCHS`` picks the CUDA architectures (default "80;90"); ``L2S_BUILD_TYPE``
(default Release); ``L2S_NATIVE_ARCH=1`` adds -march=native; ``L2S_SKIP_NATIVE=1`` builds without
``l2s_fast`` (only to check the packaged files quickly: the CPU path of ``l2s.ops`` needs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
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


def find_cmake() -> str:
    """The PyPI ``cmake`` package when installed (a build requirement), else PATH."""
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
    ext_modules=[] if env_flag("L2S_SKIP_NATIVE") else [CMakeExtension("l2s_fast")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
