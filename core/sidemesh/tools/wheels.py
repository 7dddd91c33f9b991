"""Build every distribution of a checkout, as pip installs them (``./dev wheels``).

Usage: python -m sidemesh.tools.wheels [OUT]   (OUT: the checkout's dist/ by default)

Into OUT: the core's sdist, its platform wheel with the request path compiled by mypyc
(the hatch-mypyc hook of the root pyproject.toml), and each plugin's and the demo's wheel:
a plugin whose pyproject.toml has a mypyc hook gets an sdist and a platform wheel too.
Into OUT/pure/: the pure-Python wheels of those, the fallback where no platform wheel fits
(kept apart: ``pip install OUT/sidemesh-*.whl`` given both would refuse them as a
conflict). The core's wheels are built from its sdist, because the hook compiles in the
tree it builds in, and with this environment's build tools (no build isolation): no
package index is needed, and mypy is the one the checkout's own build uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sidemesh.datapath import in_checkout
from sidemesh.tools.build_compiled import checkout_plugins

__all__ = ["ROOT", "build_all", "main"]

ROOT = Path(__file__).resolve().parents[3]
#: the compiled build takes about two minutes on a 2-core machine.
BUILD_TIMEOUT = 900.0


class BuildError(Exception):
    """A distribution failed to build; the message ends with the build's output."""


def _build(what: str, source: Path, out: Path, *options: str,
           env: dict[str, str] | None = None) -> Path:
    """``python -m build`` of ``source`` into ``out``; the file it made."""
    before = set(out.glob("*")) if out.is_dir() else set()
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
               *options, str(source)]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what}: no result after {BUILD_TIMEOUT:g}s") from exc
    made = sorted(set(out.glob("*")) - before)
    if result.returncode != 0 or len(made) != 1:
        raise BuildError(f"{what} failed:\n{(result.stdout + result.stderr)[-8000:]}")
    print(f"built {made[0]}", file=sys.stderr, flush=True)
    return made[0]


def build_all(out: Path) -> list[Path]:
    """Build every distribution into ``out`` (emptied of earlier ones first).

    :raises BuildError: when one fails.
    """
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "pure", ignore_errors=True)
    for old in [*out.glob("*.whl"), *out.glob("*.tar.gz")]:
        old.unlink()
    sdist = _build("the core's sdist", ROOT, out, "--sdist")
    made = [sdist, _build("the core's pure wheel", sdist, out / "pure", "--wheel")]
    print("compiling the request path with mypyc for the platform wheel "
          "(about two minutes)...", file=sys.stderr, flush=True)
    made.append(_build("the core's platform wheel", sdist, out, "--wheel",
                       env={"HATCH_BUILD_HOOK_ENABLE_MYPYC": "1"}))
    compiled = {plugin.package_dir.parent for plugin in checkout_plugins(ROOT)}
    projects = [*sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml")),
                ROOT / "demo"]
    for project in projects:
        if project not in compiled:
            made.append(_build(project.name, project, out, "--wheel"))
            continue
        # As the core's: a platform wheel with the modules its mypyc hook names, built
        # from the sdist, and the pure wheel beside the core's.
        plugin_sdist = _build(f"{project.name}'s sdist", project, out, "--sdist")
        made += [plugin_sdist,
                 _build(f"{project.name}'s pure wheel", plugin_sdist, out / "pure", "--wheel"),
                 _build(f"{project.name}'s platform wheel", plugin_sdist, out, "--wheel",
                        env={"HATCH_BUILD_HOOK_ENABLE_MYPYC": "1"})]
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidemesh.tools.wheels",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "dist",
                        help="where the distributions go (default: dist/ of the checkout)")
    args = parser.parse_args(argv)
    if not in_checkout():
        print("sidemesh.tools.wheels builds a checkout's distributions; this sidemesh is "
              "installed, not a checkout", file=sys.stderr)
        return 1
    missing = [m for m in ("build", "hatch_mypyc") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{' and '.join(missing)} not installed: pip install -e '.[dev]' (./dev does)",
              file=sys.stderr)
        return 1
    try:
        build_all(args.out.resolve())
    except (BuildError, OSError) as exc:
        print(f"sidemesh.tools.wheels: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
