"""Compile a checkout's request path with mypyc (see :mod:`sidemesh.datapath`).

Usage: python -m sidemesh.tools.build_compiled [--if-stale | --status]

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
    build_dir,
    check,
    fingerprint,
    in_checkout,
    state,
)

__all__ = ["BuildProgress", "build", "compile_with_progress", "main"]

BUILD_TIMEOUT = 900.0
#: setuptools' line as it starts each C extension: mypyc's shared one, then one per module.
_BUILDING = re.compile(r"building '([^']+)' extension")

MYPY_CONFIG = """[mypy]
python_version = 3.11

[mypy-re2]
ignore_missing_imports = True
"""


def build(target: Path) -> None:
    """Compile :data:`MODULES` with mypyc into ``target`` (replaced as a whole, so a
    process still running the old build keeps its files)."""
    with tempfile.TemporaryDirectory(prefix="sidemesh-mypyc-") as tmp:
        work = Path(tmp)
        # Compiled from a copy: mypyc writes its extensions next to the sources.
        skip = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(PACKAGE_DIR.parent, work / "sidemesh", ignore=skip)
        # The copy has no pyproject.toml beside it: say here which imports ship no types.
        (work / "mypy.ini").write_text(MYPY_CONFIG)
        command = [
            sys.executable,
            "-m",
            "mypyc",
            *(f"sidemesh/datapath/{name}.py" for name in MODULES),
        ]
        with BuildProgress(len(MODULES)) as progress:
            compile_with_progress(command, work, progress)
        staging = Path(f"{target}.new")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "sidemesh" / "datapath").mkdir(parents=True)
        files = []
        for path in [*work.glob("*.so"), *(work / "sidemesh" / "datapath").glob("*.so")]:
            relative = path.relative_to(work)
            shutil.copy2(path, staging / relative)
            files.append(str(relative))
        manifest = {**fingerprint(), "files": sorted(files)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


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
    if args.status:
        print(state().reason)
        return 0
    if not in_checkout() and "SIDEMESH_COMPILED_DIR" not in os.environ:
        # A build made here would be outside pip's record: left behind by `pip uninstall`,
        # passed over (its sources differ) after `pip install -U`.
        print(f"sidemesh is installed in {PACKAGE_DIR.parent.parent}, not a checkout: "
              f"{state().remedy or 'its compiled modules come with the wheel'}",
              file=sys.stderr)
        return 1
    if args.if_stale and check(target, honour_env=False).active:
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print(
            "mypyc is not installed (pip install mypy): sidemesh runs interpreted", file=sys.stderr
        )
        return 1
    print("compiling the request path with mypyc (about a minute)...", file=sys.stderr)
    try:
        build(target)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(
            f"could not compile the request path, sidemesh runs interpreted: {exc}", file=sys.stderr
        )
        return 1
    print(f"compiled {len(MODULES)} modules into {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
