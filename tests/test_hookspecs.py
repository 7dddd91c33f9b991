"""The hook contract documents itself: every hook has a summary, says whether it may be
async and when it is called, documents every parameter, and is exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from sidemesh.api import hookspecs
from sidemesh.api.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
DATA_PATH_HOOKS = [
    "on_request",
    "select_upstream",
    "connection_setup",
    "on_response",
    "on_complete",
]
LIFECYCLE_HOOKS = [
    name for name, obj in vars(hookspecs).items() if name.startswith("sidemesh_") and callable(obj)
]
ALL_HOOKS = [(name, getattr(Policy, name)) for name in DATA_PATH_HOOKS] + [
    (name, getattr(hookspecs, name)) for name in LIFECYCLE_HOOKS
]


def test_there_are_lifecycle_hooks_and_four_plus_data_path_hooks() -> None:
    assert "sidemesh_policies" in LIFECYCLE_HOOKS
    assert len(ALL_HOOKS) >= 6


@pytest.mark.parametrize(("name", "hook"), ALL_HOOKS, ids=[n for n, _ in ALL_HOOKS])
def test_hook_is_documented(name: str, hook: object) -> None:
    doc = inspect.getdoc(hook)
    assert doc, f"{name} has no docstring"
    summary = doc.split("\n\n")[0]
    assert len(summary) > 20, f"{name}: the summary line is missing"
    assert re.search(r"\b(Sync|sync|async|Async)\b", doc), f"{name}: say whether it may be async"
    assert "called" in doc.lower(), f"{name}: say when it is called"
    params = [p for p in inspect.signature(hook).parameters if p != "self"]  # type: ignore[arg-type]
    for param in params:
        assert f":param {param}:" in doc, f"{name}: parameter {param!r} is not documented"
    hints = inspect.get_annotations(hook, eval_str=False)  # type: ignore[arg-type]
    assert "return" in hints and all(p in hints for p in params), f"{name} is not fully typed"


@pytest.mark.parametrize("name", [n for n, _ in ALL_HOOKS])
def test_hook_has_a_test(name: str) -> None:
    test_files = [
        p
        for p in [*ROOT.glob("tests/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
        if p.name != "test_hookspecs.py"
    ]
    assert any(re.search(rf"\b{name}\b", p.read_text()) for p in test_files), (
        f"no test exercises the {name} hook"
    )
