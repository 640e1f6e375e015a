"""The bench scripts imported as modules (they are scripts, not a package)."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def loaded_script(file_name: str) -> Iterator[ModuleType]:
    """``bench/<file_name>`` as a module for the duration of a fixture (registered in sys.modules
    while it loads: dataclasses look their module up)."""
    name = f"l2s_bench_{Path(file_name).stem}"
    spec = importlib.util.spec_from_file_location(name, BENCH / file_name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
