"""Python 3.10 support (pyproject.toml's requires-python): no 3.11+ syntax or standard-library
name is used without a fallback anywhere in the core and the bundled plugins.

An AST scan, so it runs on any interpreter: a 3.11-only import or name counts unless it sits in an
``if sys.version_info >= ...`` branch, an ``if TYPE_CHECKING:`` block or a ``try`` that catches
ImportError; the syntax is checked by parsing with ``feature_version=(3, 10)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("dance", "plugins", "rewards", "samplers")

# Modules that are new in 3.11+.
NEW_MODULES = {"tomllib", "wsgiref.types"}
# (module, name) pairs added in 3.11 or 3.12.
NEW_NAMES = {
    "typing": {
        "Self",
        "LiteralString",
        "Never",
        "assert_never",
        "assert_type",
        "reveal_type",
        "dataclass_transform",
        "NotRequired",
        "Required",
        "TypeVarTuple",
        "Unpack",
        "get_overloads",
        "clear_overloads",
        "override",
        "TypeAliasType",
    },
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "verify", "member", "nonmember", "global_enum"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Timeout"},
    "datetime": {"UTC"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "itertools": {"batched"},
    "math": {"exp2", "cbrt"},
    "re": {"NOFLAG"},
    "logging": {"getLevelNamesMapping"},
    "inspect": {"markcoroutinefunction", "getmembers_static"},
}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _is_guard(node: ast.AST) -> bool:
    """An ``if`` on sys.version_info or TYPE_CHECKING, or a ``try`` catching ImportError."""
    if isinstance(node, ast.If):
        text = ast.unparse(node.test)
        return "version_info" in text or "TYPE_CHECKING" in text
    if isinstance(node, ast.Try):
        caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
        return "ImportError" in caught or "ModuleNotFoundError" in caught
    return False


def py311_only_uses(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` needs Python 3.11 or later without a fallback, as 'file:line: what'."""
    try:
        ast.parse(source, filename, feature_version=(3, 10))
    except SyntaxError as exc:
        return [f"{filename}:{exc.lineno}: syntax newer than 3.10 ({exc.msg})"]
    tree = ast.parse(source, filename)
    found: list[str] = []
    module_aliases: dict[str, str] = {}

    def visit(node: ast.AST, guarded: bool) -> None:
        guarded = guarded or _is_guard(node)
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                module_aliases[alias.asname or alias.name] = alias.name
                if alias.name in NEW_MODULES and not guarded:
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and not guarded:
            if node.module in NEW_MODULES:
                found.append(f"{where}: from {node.module} import ...")
            new = NEW_NAMES.get(node.module, set())
            found.extend(f"{where}: {node.module}.{a.name}" for a in node.names if a.name in new)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and not guarded:
            module = module_aliases.get(node.value.id, "")
            if node.attr in NEW_NAMES.get(module, set()):
                found.append(f"{where}: {module}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS and not guarded:
            found.append(f"{where}: {node.id}")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def _sources() -> list[Path]:
    files = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not any(part.endswith(".egg-info") or part == "build" for part in path.parts):
                files.append(path)
    return files


def test_no_unguarded_python311_feature_in_any_package() -> None:
    files = _sources()
    assert len(files) > 50  # the scan really reads the packages
    problems = [p for f in files for p in py311_only_uses(f.read_text(), str(f.relative_to(ROOT)))]
    assert not problems, "needs Python 3.11+ without a fallback:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, needle",
    [
        ("import tomllib\n", "import tomllib"),
        ("def f():\n    import tomllib\n", "import tomllib"),
        ("from typing import Self\n", "typing.Self"),
        ("import typing\nx: typing.Self\n", "typing.Self"),
        ("import enum as e\nclass C(e.StrEnum): pass\n", "enum.StrEnum"),
        ("from enum import StrEnum\n", "enum.StrEnum"),
        ("raise ExceptionGroup('x', [])\n", "ExceptionGroup"),
        ("from datetime import UTC\n", "datetime.UTC"),
        ("try:\n    pass\nexcept* ValueError:\n    pass\n", "syntax newer than 3.10"),
        ("type Alias = int\n", "syntax newer than 3.10"),
        ("def f[T](x: T) -> T:\n    return x\n", "syntax newer than 3.10"),
    ],
)
def test_the_scan_finds_311_features(source: str, needle: str) -> None:
    problems = py311_only_uses(source)
    assert problems and needle in problems[0], problems


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nif sys.version_info >= (3, 11):\n    import tomllib\n"
        "else:\n    import tomli as tomllib\n",
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from typing import Self\n",
        "import typing\nx = typing.Optional[int]\n",
    ],
)
def test_the_scan_accepts_guarded_uses(source: str) -> None:
    assert py311_only_uses(source) == []
