"""The core's layering (docs/architecture.md): the plugin API at the top of dance/ stands alone,
each subpackage imports only the layers below it, nothing but the command line (and the test
helpers) imports the command line, and no two modules import each other, even inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import dance

ROOT = Path(dance.__file__).parent

# What each part of dance/ may import from dance/ ("top" = the modules at the top of dance/).
# Subpackages not named here may import anything but the command line.
ALLOWED = {
    "top": {"top"},
    "models": {"top"},
    "video": {"top"},
    "sampling": {"top", "video"},
    "reporting": {"top", "video"},
    "training": {"top", "models", "video", "sampling", "reporting"},
}
MAY_IMPORT_CLI = {"cli", "testing"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (ROOT / parts[-1]).is_dir() else "top"


def _imports(path: Path, known: set[str]) -> set[str]:
    """The dance modules ``path`` imports, at module level or in a function; imports under
    ``if TYPE_CHECKING:`` (annotations only) are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n != "dance"}
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    known = set(paths)
    return {module: _imports(path, known) - {module} for module, path in paths.items()}


def test_each_part_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        for target in imported:
            other = _part(target)
            if other == part:
                continue
            if other == "cli" and part not in MAY_IMPORT_CLI:
                wrong.append(f"{module} imports {target} (only the command line imports it)")
            elif part in ALLOWED and other not in ALLOWED[part]:
                wrong.append(f"{module} imports {target} ({part} may import {ALLOWED[part]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_real_imports():
    # The checks above would pass on an empty graph: make sure they read what the code imports.
    graph = _graph()
    assert "dance.training.run_config" in graph["dance.cli.recipe"]
    assert "dance.sampling.generate" in graph["dance.training.trainer"]
    assert _part("dance.interfaces") == "top" and _part("dance.cli") == "cli"
