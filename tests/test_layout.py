"""The package reads along its data path: no import circles, no lower layer importing a higher one.

Every import in l2s/ counts, those inside functions and a package's lazily loaded names included
(a circle hidden in a function is still a circle); a name computed at run time, which no test can read,
only in the modules COMPUTED_IMPORTS lists. Layers, lowest first; a module may import its own layer and
those below it.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "l2s"

LAYERS = (
    ("l2s", "l2s.errors", "l2s.files", "l2s.relations", "l2s.distributed", "l2s.lazy", "l2s.devices", "l2s.versions",
     "l2s.quiet", "l2s.values", "l2s.run_folders"),
    ("l2s.parsing", "l2s.tokens", "l2s.tokenizers"),
    ("l2s.ops", "l2s.kernels"),
    ("l2s.capture",),
    ("l2s.classifier",),
    ("l2s.steer",),
    ("l2s.engines",),
    ("l2s.pipelines",),
    ("l2s.evaluation",),
    ("l2s.training",),
    ("l2s.reward",),
    ("l2s.grpo",),
    ("l2s.shapes",),
    ("l2s.demo",),
    ("l2s.models",),
    ("l2s.cli", "l2s.__main__"),
)


def layer_of(module: str) -> int:
    """Layer of a dotted module name: that of its longest listed prefix (the package itself, "l2s",
    only by name: a new top-level module must be given its layer)."""
    best, rank = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            prefix = name != "l2s" and module.startswith(name + ".")
            if (module == name or prefix) and len(name) > best:
                best, rank = len(name), index
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")
    return rank


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (kernels/ and engines/ via their links)."""
    files = {}
    # os.walk with followlinks: Path.rglob skips the kernels/ and engines/ links before Python 3.13.
    paths = [Path(root) / name for root, _, names in os.walk(PACKAGE, followlinks=True)
             for name in names if name.endswith(".py")]
    for path in sorted(paths):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """l2s modules that ``name`` imports anywhere in its file (package faces count as modules)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif _dynamic_import(node):              # importlib.import_module("l2s.x") / __import__("l2s.x")
            targets = [node.args[0].value]
        elif _lazy_table(node, tree) is not None:    # lazy_names(__name__, {"Name": "submodule"}, ...)
            targets = [f"{package}.{submodule}" for submodule in _lazy_table(node, tree)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # l2s.x.y.attr -> l2s.x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _dynamic_import(node: ast.AST) -> bool:
    """A call of ``import_module`` or ``__import__`` whose first argument is a literal ``l2s`` name."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    name = node.args[0].value
    return called in ("import_module", "__import__") and isinstance(name, str) and name.startswith("l2s.")


def _computed_import(node: ast.AST) -> bool:
    """A call of ``import_module`` or ``__import__`` whose module name is computed: no test can read it."""
    if not isinstance(node, ast.Call) or not node.args or isinstance(node.args[0], ast.Constant):
        return False
    func = node.func
    return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in ("import_module",
                                                                                            "__import__")


# The modules that import by a computed name, and what they import so: the rules above cannot see it.
COMPUTED_IMPORTS = {
    "l2s.lazy": "a package's lazily loaded submodules (its lazy_names table, read above as that package's imports)",
    "l2s.cli": "the front ends of _ENTRIES, its own submodules (the same layer)",
    "l2s.pipelines.loading": "the component modules a model folder's model_index.json names (data, not code)",
    "l2s.classifier.hub": "huggingface_hub's HTTP client (httpx2 or httpx), for its connection errors",
}


def _lazy_table(node: ast.AST, tree: ast.Module) -> list[str] | None:
    """The submodules of a ``lazy_names(package, where, ...)`` call (:mod:`l2s.lazy`): ``where`` as a
    dict literal or the name of a module-level one; they load on first use, imports all the same."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "lazy_names"
            and len(node.args) >= 2):
        return None
    where = node.args[1]
    if isinstance(where, ast.Name):
        tables = [n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
                  and any(getattr(t, "id", None) == where.id for t in n.targets)]
        where = tables[-1] if tables else None
    if not isinstance(where, ast.Dict):
        raise AssertionError(f"lazy_names table {ast.unparse(node.args[1])} is not a dict literal: the layout "
                             "test cannot read it")
    return [value.value for value in where.values if isinstance(value, ast.Constant)]


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def test_every_module_has_a_layer():
    for name in module_files():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    wrong = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
             for name, targets in import_graph().items() for target in sorted(targets)
             if layer_of(target) > layer_of(name)]
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    # Guards the test above: a two-module circle and a three-module one are both reported.
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_the_layer_rule_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from l2s.cli import main\n    from .steer import Schedule\n"
                      "if TYPE_CHECKING:\n    from l2s.demo import tiny_flux_pipeline\n")
    known = {"l2s.cli", "l2s.steer", "l2s.capture", "l2s.capture.steer", "l2s.demo"}
    # relative to l2s.capture.mod, `.steer` is l2s.capture.steer; relative to l2s.mod, l2s.steer
    assert imported_modules("l2s.capture.mod", source, known) == {"l2s.cli", "l2s.capture.steer", "l2s.demo"}
    assert imported_modules("l2s.mod", source, known) == {"l2s.cli", "l2s.steer", "l2s.demo"}
    assert layer_of("l2s.cli") > layer_of("l2s.capture.steer")


def test_the_layer_rule_sees_imports_by_name(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import importlib\ndef f(name):\n    importlib.import_module('l2s.shapes.model')\n"
                      "    __import__('l2s.cli')\n    importlib.import_module(name)\n")
    known = {"l2s.cli", "l2s.shapes", "l2s.shapes.model"}
    assert imported_modules("l2s.pipelines.mod", source, known) == {"l2s.cli", "l2s.shapes.model"}


def test_the_layer_rule_sees_lazily_loaded_names(tmp_path):
    source = tmp_path / "__init__.py"
    source.write_text("from l2s.lazy import lazy_names\n_WHERE = {'Bench': 'bench', 'load': 'model'}\n"
                      "__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())\n")
    known = {"l2s.lazy", "l2s.shapes", "l2s.shapes.bench", "l2s.shapes.model"}
    assert imported_modules("l2s.shapes", source, known) == {"l2s.lazy", "l2s.shapes.bench", "l2s.shapes.model"}


def test_every_import_by_a_computed_name_is_known():
    found = {name for name, path in module_files().items()
             if any(map(_computed_import, ast.walk(ast.parse(path.read_text(encoding="utf-8")))))}
    assert found == set(COMPUTED_IMPORTS), "import by a literal name, or add the module to COMPUTED_IMPORTS"


def test_an_import_by_a_computed_name_is_found():
    tree = ast.parse("import importlib\ndef f(name):\n    importlib.import_module(f'l2s.{name}')\n"
                     "    importlib.import_module('l2s.cli')\n")
    assert [ast.unparse(n) for n in ast.walk(tree) if _computed_import(n)] == ["importlib.import_module(f'l2s.{name}')"]


def test_the_library_never_imports_research_or_tests():
    outside = {"experiments", "bench", "scripts", "tests", "conftest", "gpu_flux_dev"}
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not {m.split(".")[0] for m in modules} & outside, f"{name} imports {modules}"


@pytest.mark.parametrize("name", ["kernels", "engines"])
def test_top_level_code_folders_import_as_l2s_subpackages_from_the_checkout(name):
    import importlib

    module = importlib.import_module(f"l2s.{name}")
    assert Path(module.__file__).resolve().parent == ROOT / name
