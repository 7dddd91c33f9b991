"""Compile a checkout's request path with mypyc (see :mod:`sidemesh.datapath`), and the
per-request modules of its plugins.

Usage: python -m sidemesh.tools.build_compiled [--if-stale | --status]

A plugin names the modules it has compiled in its pyproject.toml, as the ``include``
list of its hatch-mypyc hook (the one its platform wheel is built with).

A developer's convenience (``./dev setup`` runs it): an installed sidemesh gets its
compiled modules from the platform wheel, where pip keeps track of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from sidemesh.datapath import (
    MANIFEST,
    MODULES,
    PACKAGE_DIR,
    PLUGIN_BUILDS,
    State,
    build_dir,
    check,
    fingerprint,
    in_checkout,
    plugin_check,
    plugin_fingerprint,
    state,
)

__all__ = ["BuildProgress", "PluginSources", "build", "build_plugin", "checkout_plugins",
           "compile_with_progress", "main"]

BUILD_TIMEOUT = 900.0
#: setuptools' line as it starts each C extension: mypyc's shared one, then one per module.
_BUILDING = re.compile(r"building '([^']+)' extension")

MYPY_CONFIG = """[mypy]
python_version = 3.11

[mypy-re2]
ignore_missing_imports = True
"""


def _compile(package_dir: Path, modules: Sequence[str], staging: Path) -> list[str]:
    """mypyc's build of ``modules`` of the package in ``package_dir``, copied into
    ``staging`` (made afresh) as the package's folder and its shared library; the files."""
    package = package_dir.name
    with tempfile.TemporaryDirectory(prefix="sidemesh-mypyc-") as tmp:
        work = Path(tmp)
        # Compiled from a copy: mypyc writes its extensions next to the sources.
        skip = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(package_dir, work / package, ignore=skip)
        # The copy has no pyproject.toml beside it: say here which imports ship no types.
        (work / "mypy.ini").write_text(MYPY_CONFIG)
        command = [sys.executable, "-m", "mypyc", *(f"{package}/{name}.py" for name in modules)]
        with BuildProgress(len(modules)) as progress:
            compile_with_progress(command, work, progress)
        shutil.rmtree(staging, ignore_errors=True)
        files = []
        for path in [*work.glob("*.so"), *work.glob(f"{package}/**/*.so")]:
            relative = path.relative_to(work)
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / relative)
            files.append(str(relative))
    return sorted(files)


def _replace(staging: Path, target: Path) -> None:
    # Replaced whole, so a process still running the old build keeps its files.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def build(target: Path) -> None:
    """Compile :data:`MODULES` with mypyc into ``target``, keeping the plugins' builds."""
    staging = Path(f"{target}.new")
    files = _compile(PACKAGE_DIR.parent, [f"datapath/{name}" for name in MODULES], staging)
    (staging / MANIFEST).write_text(json.dumps({**fingerprint(), "files": files}, indent=2))
    if (target / PLUGIN_BUILDS).is_dir():
        (target / PLUGIN_BUILDS).rename(staging / PLUGIN_BUILDS)
    _replace(staging, target)


class PluginSources:
    """A plugin package of the checkout and the modules its pyproject.toml has compiled."""

    def __init__(self, package_dir: Path, modules: list[str]) -> None:
        self.package_dir = package_dir
        self.package = package_dir.name
        self.modules = modules

    def state(self, target: Path) -> State:
        folder = target / PLUGIN_BUILDS / self.package
        try:
            built = sorted(json.loads((folder / MANIFEST).read_text())["sources"])
        except (OSError, ValueError, KeyError, TypeError):
            built = []
        if built and built != sorted(self.modules):
            return State(False, "interpreted: pyproject.toml lists other modules than the "
                                "build has (rebuild it)")
        return plugin_check(self.package, folder, self.package_dir)


def checkout_plugins(root: Path = PACKAGE_DIR.parents[2]) -> list[PluginSources]:
    """Every plugin under ``root``/plugins whose hatch-mypyc hook names modules."""
    found = []
    for pyproject in sorted((root / "plugins").glob("*/pyproject.toml")):
        table = tomllib.loads(pyproject.read_text())
        for key in ("tool", "hatch", "build", "targets", "wheel", "hooks", "mypyc"):
            table = table.get(key, {})
        include: list[str] = table.get("include", [])
        if not include:
            continue
        # "/sidemesh_retry/policy.py": modules of the package itself, never a subpackage's.
        parts = [entry.strip("/").split("/") for entry in include]
        package = parts[0][0]
        if any(len(p) != 2 or p[0] != package or not p[1].endswith(".py") for p in parts):
            raise ValueError(f"{pyproject}: the mypyc hook's include must list modules of "
                             f"one package as /{package}/<module>.py: {include}")
        found.append(PluginSources(pyproject.parent / package,
                                   [p[1].removesuffix(".py") for p in parts]))
    return found


def build_plugin(plugin: PluginSources, target: Path) -> None:
    """Compile one plugin's modules into its folder of the build in ``target``."""
    folder = target / PLUGIN_BUILDS / plugin.package
    staging = Path(f"{folder}.new")
    files = _compile(plugin.package_dir, plugin.modules, staging)
    manifest = {**plugin_fingerprint(plugin.package_dir, plugin.modules), "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _replace(staging, folder)


class BuildProgress:
    """Where the build is, on ``stream`` (stderr): a live bar on a terminal, a plain line
    per step otherwise (a CI log keeps them all)."""

    def __init__(self, modules: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        # mypy's type check and C generation, the shared library, then each module's own.
        self.total = modules + 2
        self.step = 0
        self._bar: Progress | None = None

    def __enter__(self) -> BuildProgress:
        if self.stream.isatty():
            self._bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._bar.add_task("", total=self.total)
        self._show("type-checking and generating C")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def feed(self, line: str) -> None:
        """One line of mypyc's output."""
        match = _BUILDING.search(line)
        if match is None:
            return
        self.step += 1
        name = match[1]
        self._show("compiling the C code of all modules" if name.endswith("__mypyc")
                   else f"building {name}")

    def _show(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], completed=self.step, description=text)
        else:
            print(f"[{self.step + 1}/{self.total}] {text}", file=self.stream, flush=True)


def compile_with_progress(command: Sequence[str], cwd: Path, progress: BuildProgress,
                          timeout: float = BUILD_TIMEOUT) -> None:
    """Run mypyc's ``command``, its output read as it comes for ``progress``.

    :raises RuntimeError: with the end of the output when it fails.
    :raises subprocess.TimeoutExpired: when it takes longer than ``timeout`` (it is
        killed).
    """
    tail: deque[str] = deque(maxlen=100)
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            process.kill()

        # Reading blocks until a line comes: the timer is what ends a hung build.
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line)
                progress.feed(line)
        finally:
            timer.cancel()
        code = process.wait()
    if expired.is_set():
        raise subprocess.TimeoutExpired(list(command), timeout)
    if code != 0:
        raise RuntimeError(f"mypyc failed:\n{''.join(tail)[-8000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidemesh.tools.build_compiled", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--if-stale", action="store_true", help="build only when stale")
    mode.add_argument("--status", action="store_true", help="only say what runs, and why")
    args = parser.parse_args(argv)
    target = build_dir()
    plugins = checkout_plugins() if in_checkout() else []
    if args.status:
        print(state().reason)
        for plugin in plugins:
            print(f"{plugin.package}: {plugin.state(target).reason}")
        return 0
    if not in_checkout() and "SIDEMESH_COMPILED_DIR" not in os.environ:
        # A build made here would be outside pip's record: left behind by `pip uninstall`,
        # passed over (its sources differ) after `pip install -U`.
        print(f"sidemesh is installed in {PACKAGE_DIR.parent.parent}, not a checkout: "
              f"{state().remedy or 'its compiled modules come with the wheel'}",
              file=sys.stderr)
        return 1
    declared = {plugin.package for plugin in plugins}
    # A plugin's build that no pyproject.toml asks for any more is not used again.
    for folder in (target / PLUGIN_BUILDS).glob("*"):
        if folder.name not in declared:
            shutil.rmtree(folder, ignore_errors=True)
    core_stale = not (args.if_stale and check(target, honour_env=False).active)
    stale = [p for p in plugins if not (args.if_stale and p.state(target).active)]
    if not core_stale and not stale:
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print(
            "mypyc is not installed (pip install mypy): sidemesh runs interpreted", file=sys.stderr
        )
        return 1
    if core_stale:
        print("compiling the request path with mypyc (a few minutes)...", file=sys.stderr)
        try:
            build(target)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"could not compile the request path, sidemesh runs interpreted: {exc}",
                  file=sys.stderr)
            return 1
        print(f"compiled {len(MODULES)} modules into {target}", file=sys.stderr)
    failed = 0
    for plugin in stale:
        print(f"compiling {plugin.package}'s {', '.join(plugin.modules)}...", file=sys.stderr)
        try:
            build_plugin(plugin, target)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"could not compile {plugin.package}, it runs interpreted: {exc}",
                  file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
