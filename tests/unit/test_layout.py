"""The package's layering: what the recipe model pulls in, no import cycles, every engine
package shipped, the data folders found."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from xenforge.core.data import FOLDERS, data_dir

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "xenforge"


def test_the_recipe_model_loads_no_stage_runner_or_http_client() -> None:
    probe = ("import sys, xenforge.recipe.model, xenforge.recipe.load\n"
             "print('\\n'.join(sorted(sys.modules)))")
    mods = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd=REPO).stdout.split()
    assert not [m for m in mods if m.startswith("xenforge.stages")]
    assert "xenforge.core.run" not in mods and "subprocess" not in mods
    assert "requests" not in mods and "xenforge.sources.fetch" not in mods


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """xenforge modules imported by ``path`` (at any level; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xenforge"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xenforge"))
    return found


def test_no_import_cycles() -> None:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own modules is not a cycle of the design
    for m in graph:
        graph[m] = {i for i in graph[m] if not (m + ".").startswith(i + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep] if dep in path else [m, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


#: which layers a layer may import (lower layers only)
LAYERS = {
    "core": set(), "lib": {"core"}, "sources": {"core", "lib"},
    "recipe": {"core", "lib", "sources"}, "stages": {"core", "lib", "sources"},
    "plan": {"core", "lib", "sources", "recipe", "stages"},
    "cache": {"core"}, "vm": {"core"},
    "pipelines": {"core", "lib", "sources", "recipe", "stages", "plan"},
}


def test_layers_import_only_what_is_below_them() -> None:
    wrong = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        layer = rel[0] if len(rel) > 1 else None
        if layer not in LAYERS:
            continue
        for imp in _imports(path):
            parts = imp.split(".")
            if len(parts) < 2 or parts[1] in (layer, "defaults", "limits", "__version__"):
                continue
            if parts[1] not in LAYERS[layer]:
                wrong.append(f"{path.relative_to(REPO)} imports {imp}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_every_engine_package_is_shipped() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {p.parent for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}
    unmarked = sorted(str(d.relative_to(REPO)) for d in dirs
                      if not (d / "__init__.py").exists())
    assert not unmarked, f"no __init__.py (a namespace package stays out of the wheel): {unmarked}"
    engine = {_module_name(d / "__init__.py") for d in dirs}
    assert engine <= listed, f"not in pyproject.toml's packages: {sorted(engine - listed)}"
    mapped = config["package-dir"]
    for name, folder in FOLDERS.items():
        if name != "templates":
            assert mapped[f"xenforge.data.{name}"] == folder


def test_data_folders_are_found_in_a_checkout() -> None:
    for name, folder in FOLDERS.items():
        assert data_dir(name) == REPO / folder
