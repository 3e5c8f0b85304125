"""Nimbus's import graph, read from the source with :mod:`ast` (nothing is imported).

Every ``import`` and ``from ... import`` counts, at module level or inside a function or an
``if TYPE_CHECKING:`` block, and so does ``importlib.import_module("nimbus....")`` with a
literal name: a lazy import is still a dependency. Used by tests/test_architecture.py and
bench/imports.py.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = "nimbus"
SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass(frozen=True, order=True)
class Import:
    """``source`` (a module) imports ``target`` (a module, or a name's module) at ``line``."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the ``nimbus`` package under ``src``, by dotted name (a package by
    its own name, for its ``__init__.py``)."""
    found = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(src: Path = SRC) -> list[Import]:
    """Every import of a ``nimbus`` module by a ``nimbus`` module under ``src``."""
    known = modules(src)
    found: set[Import] = set()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            for target in _targets(node, package, known):
                if target == ROOT or target.startswith(ROOT + "."):
                    found.add(Import(name, target, getattr(node, "lineno", 0)))
    return sorted(found)


def third_party(src: Path = SRC) -> list[Import]:
    """Imports of top-level modules that are neither Nimbus nor the standard library."""
    found: set[Import] = set()
    for name, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                tops = [alias.name.partition(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.partition(".")[0]]
            else:
                continue
            for top in tops:
                if top != ROOT and top not in sys.stdlib_module_names and top != "__future__":
                    found.add(Import(name, top, node.lineno))
    return sorted(found)


def _targets(node: ast.AST, package: str, known: Mapping[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name``, mod.
        subs = [f"{module}.{alias.name}" for alias in node.names]
        return [sub for sub in subs if sub in known] or [module]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def package_of(module: str) -> str:
    """The first level under ``nimbus``: a sub-package (``serving``) or a top-level module
    (``server``, ``errors``); ``nimbus`` for the package face itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def package_graph(found: Iterable[Import]) -> dict[str, set[str]]:
    """Package -> the other packages it imports."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        source, target = package_of(imp.source), package_of(imp.target)
        graph.setdefault(source, set())
        graph.setdefault(target, set())
        if source != target:
            graph[source].add(target)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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
    return sorted(found)
