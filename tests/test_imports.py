"""jaxdl's modules import each other without cycles, function-local imports included."""

import ast
import graphlib
from pathlib import Path

import pytest

from tests import helpers


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that `name` (a module or an attribute of one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports anywhere in its file (top level or inside functions)."""
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(_owner(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else _owner(base, modules))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_jaxdl_has_no_import_cycle():
    assert cycle(import_graph(helpers.ROOT, "jaxdl")) is None


def test_a_function_local_import_cycle_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import thing\n")
    found = cycle(import_graph(tmp_path, "pkg"))
    assert found is not None and set(found) == {"pkg.a", "pkg.b"}
    (package / "b.py").write_text("def f():\n    return 1\n")
    assert cycle(import_graph(tmp_path, "pkg")) is None


@pytest.mark.parametrize("leaf", ["jaxdl.errors"])
def test_the_error_module_is_a_leaf(leaf):
    """The user-facing errors import nothing of jaxdl, so any package may raise them."""
    assert import_graph(helpers.ROOT, "jaxdl")[leaf] == set()
