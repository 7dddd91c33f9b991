"""Plugins, examples and the demo use sidemesh only through its public API.

The public API is what ``import sidemesh`` exports (``sidemesh.__all__``) and the test
kit (``sidemesh.testing.__all__``, ``sidemesh.testing.control.__all__``); everything
else (``sidemesh.config``, ``sidemesh.datapath``...) may change in any release, so code
that ships on its own (a plugin pins ``sidemesh>=0.Y,<0.(Y+1)``) must not reach into it.
Every ``.py`` file of ``plugins/*/``, ``examples/*/`` and ``demo/`` is read with
:mod:`ast`: imports and attribute uses of ``sidemesh`` are checked, each misuse is
reported with its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import sidemesh
import sidemesh.testing
import sidemesh.testing.control
import sidemesh.testing.grpc

ROOT = Path(__file__).resolve().parents[1]
#: where code that depends on sidemesh from the outside lives
CHECKED = ("plugins", "examples", "demo")
SKIPPED_DIRS = frozenset({"build", "dist", "__pycache__"})

#: the public modules and the names each may be used for (submodules included)
PUBLIC: dict[str, frozenset[str]] = {
    "sidemesh": frozenset({*sidemesh.__all__, "testing"}),
    "sidemesh.testing": frozenset({*sidemesh.testing.__all__, "control", "grpc"}),
    "sidemesh.testing.control": frozenset(sidemesh.testing.control.__all__),
    "sidemesh.testing.grpc": frozenset(sidemesh.testing.grpc.__all__),
}


def _is_sidemesh(module: str) -> bool:
    return module == "sidemesh" or module.startswith("sidemesh.")


class _Checker:
    """Collects the misuses of one module's source, as ``(line, message)``."""

    def __init__(self) -> None:
        #: local name -> the public sidemesh module it is bound to
        self.modules: dict[str, str] = {}
        self.found: list[tuple[int, str]] = []

    def _report(self, node: ast.stmt | ast.expr, message: str) -> None:
        self.found.append((node.lineno, message))

    def check_import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not _is_sidemesh(alias.name):
                continue
            if alias.name not in PUBLIC:
                self._report(node, f"import {alias.name}: not the public API")
            elif alias.asname:
                self.modules[alias.asname] = alias.name
            else:
                # ``import sidemesh.testing`` binds ``sidemesh``.
                self.modules["sidemesh"] = "sidemesh"

    def check_import_from(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not _is_sidemesh(module):
            return
        allowed = PUBLIC.get(module)
        if allowed is None:
            names = ", ".join(alias.name for alias in node.names)
            self._report(node, f"from {module} import {names}: not the public API")
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            if alias.name not in allowed:
                self._report(node, f"from {module} import {alias.name}: not exported by {module}")
                continue
            submodule = f"{module}.{alias.name}"
            if submodule in PUBLIC:
                self.modules[alias.asname or alias.name] = submodule

    def _module_of(self, node: ast.expr) -> str | None:
        """The public module ``node`` refers to (``sidemesh.testing``), if any."""
        if isinstance(node, ast.Name):
            return self.modules.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._module_of(node.value)
            if parent is not None and f"{parent}.{node.attr}" in PUBLIC:
                return f"{parent}.{node.attr}"
        return None

    def check_attribute(self, node: ast.Attribute) -> None:
        module = self._module_of(node.value)
        if module is not None and node.attr not in PUBLIC[module]:
            self._report(node, f"{module}.{node.attr}: not exported by {module}")


def check_source(source: str, filename: str = "<string>") -> list[str]:
    """Every use of a non-public sidemesh name in ``source``, as ``file:line: message``."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        return [f"{filename}:{exc.lineno}: cannot be parsed: {exc.msg}"]
    checker = _Checker()
    # Imports first: an alias may be bound below its first use (in a function body).
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            checker.check_import(node)
        elif isinstance(node, ast.ImportFrom):
            checker.check_import_from(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            checker.check_attribute(node)
    found = sorted(checker.found, key=lambda item: item[0])
    return [f"{filename}:{line}: {message}" for line, message in found]


def _python_files() -> Iterator[Path]:
    for top in CHECKED:
        directory = ROOT / top
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*.py")):
            relative = path.relative_to(ROOT).parts
            if not SKIPPED_DIRS.intersection(relative) and not any(
                part.startswith(".") for part in relative
            ):
                yield path


def test_plugins_examples_and_the_demo_use_only_the_public_api() -> None:
    files = list(_python_files())
    assert any(p.parts[len(ROOT.parts)] == "plugins" for p in files), "no plugin found"
    problems = [
        problem
        for path in files
        for problem in check_source(
            path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()
        )
    ]
    assert not problems, (
        "code outside the core uses sidemesh names the public API does not export "
        "(import them from `sidemesh` or `sidemesh.testing`, or export them there):\n"
        + "\n".join(problems)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from sidemesh.datapath.messages import Request\n",
            "x.py:1: from sidemesh.datapath.messages import Request: not the public API",
        ),
        ("import sidemesh.config\n", "x.py:1: import sidemesh.config: not the public API"),
        (
            "from sidemesh import Request, compiled\n",
            "x.py:1: from sidemesh import compiled: not exported by sidemesh",
        ),
        (
            "import sidemesh\n\nsidemesh.config.validate.load_file('a')\n",
            "x.py:3: sidemesh.config: not exported by sidemesh",
        ),
        (
            "import sidemesh as sm\n\ndef f():\n    return sm.datapath.flags\n",
            "x.py:4: sidemesh.datapath: not exported by sidemesh",
        ),
        (
            "from sidemesh.testing import running_sidecar, BackgroundLoopOops\n",
            "x.py:1: from sidemesh.testing import BackgroundLoopOops: "
            "not exported by sidemesh.testing",
        ),
        (
            "from sidemesh import testing\n\ntesting.loop.BackgroundLoop\n",
            "x.py:3: sidemesh.testing.loop: not exported by sidemesh.testing",
        ),
        (
            "import sidemesh.testing.control\n\nsidemesh.testing.control.ControlState\n",
            "x.py:3: sidemesh.testing.control.ControlState: "
            "not exported by sidemesh.testing.control",
        ),
        (
            "from sidemesh.testing.control import store\n",
            "x.py:1: from sidemesh.testing.control import store: "
            "not exported by sidemesh.testing.control",
        ),
    ],
)
def test_the_checker_reports_internal_names_with_file_and_line(
    source: str, expected: str
) -> None:
    assert check_source(source, "x.py") == [expected]


def test_the_checker_accepts_the_public_api() -> None:
    source = (
        "import sidemesh\n"
        "import sidemesh.testing.control as control\n"
        "from sidemesh import Policy, ResponseFlag, StashKey, hookimpl, testing\n"
        "from sidemesh.testing import running_sidecar\n"
        "from sidemesh.testing.control import ControlServer\n"
        "from sidemesh_retry.policy import RetryPolicy\n"
        "from . import plugin\n"
        "KEY: StashKey[int] = StashKey('n')\n"
        "flag = sidemesh.ResponseFlag.UPSTREAM_OVERFLOW\n"
        "version = sidemesh.__version__\n"
        "server = sidemesh.testing.control.ControlServer\n"
        "also = control.ControlServer, testing.Upstream, sidemesh.testing.free_port\n"
    )
    assert check_source(source, "ok.py") == []
