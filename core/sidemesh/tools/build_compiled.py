"""Compile the request path with mypyc (see :mod:`sidemesh.datapath`).

Usage: python -m sidemesh.tools.build_compiled [--if-stale | --status]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sidemesh.datapath import MANIFEST, MODULES, PACKAGE_DIR, build_dir, check, fingerprint

__all__ = ["build", "main"]

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
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"mypyc failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
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
        print(check(target).reason)
        return 0
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
