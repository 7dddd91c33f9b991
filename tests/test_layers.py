"""The shape of the house: no import cycles (not even under TYPE_CHECKING), modules of a
readable size, and plugins, the example and the demo written against the public API.
The layers themselves are import-linter's contract in pyproject.toml (``./dev test``)."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what ``import sidemesh`` promises; everything else under sidemesh is internal.
OUTSIDE_THE_CORE = [ROOT / "plugins", ROOT / "examples", ROOT / "demo"]
MAX_LINES = 450


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module) & modules:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_in_the_core_even_for_type_checking() -> None:
    graph = grimp.build_graph("sidemesh", exclude_type_checking_imports=False)
    # A package importing its own submodules is how __init__ exports names, not a cycle.
    modules = {m for m in graph.modules if m != "sidemesh"}
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph, {"a", "b", "c"}) == [["a", "b"]]


def _python_files() -> list[Path]:
    trees = [ROOT / "core" / "sidemesh", *OUTSIDE_THE_CORE, ROOT / "bench"]
    return sorted(p for tree in trees if tree.exists() for p in tree.rglob("*.py")
                  if ".venv" not in p.parts and "build" not in p.parts)


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_readable(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it"


def test_nothing_outside_the_core_imports_its_internals() -> None:
    internal = re.compile(r"^\s*(from sidemesh\.|import sidemesh\.)", re.M)
    offenders = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for tree in OUTSIDE_THE_CORE if tree.exists()
        for path in sorted(tree.rglob("*.py"))
        for text in [path.read_text(encoding="utf-8")]
        for m in internal.finditer(text)
    ]
    assert offenders == []
