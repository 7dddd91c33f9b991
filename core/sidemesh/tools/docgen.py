"""Generate the reference pages of docs/ from the code, so they cannot drift from it.

    python -m sidemesh.tools.docgen            write docs/config-reference.md and hooks-reference.md
    python -m sidemesh.tools.docgen --check    exit 1 when either differs from what it would write

The config reference covers the core schema and the plugins of this repository's
``plugins/`` directory -- not whatever else happens to be installed, so the page is the
same on every machine. A plugin's schema comes from the installed plugin (what a proxy
validates against); a plugin of ``plugins/`` that is not installed is read from its
source tree (its ``schema.json``), so the check does not depend on what is installed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sidemesh.datapath as compiled  #
from sidemesh.tools.docgen_hooks import render_hooks_reference
from sidemesh.tools.docgen_schema import PluginSchema, render_config_reference

__all__ = ["generate", "main", "repo_plugins"]

CONFIG_REFERENCE = "docs/config-reference.md"
HOOKS_REFERENCE = "docs/hooks-reference.md"


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _find_root() -> Path:
    # core/sidemesh/tools/docgen.py -> the checkout's root, when run from one.
    return Path(__file__).resolve().parents[3]


def _source_schemas(directory: Path, entry_points: dict[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, target in entry_points.items():
        package = target.split(":", 1)[0].split(".", 1)[0]
        path = directory / package / "schema.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def repo_plugins(root: Path) -> list[PluginSchema]:
    """The plugins of ``root/plugins/``, by policy name."""
    from sidemesh.config.registry import PluginRegistry

    installed: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for policy in PluginRegistry.load().all():
        installed.setdefault(_normalize(policy.distribution), []).append(
            (policy.name, policy.schema)
        )
    found: list[PluginSchema] = []
    for pyproject in sorted((root / "plugins").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        distribution = str(project.get("name", ""))
        version = str(project.get("version", ""))
        if not distribution:
            continue
        schemas = installed.get(_normalize(distribution))
        if schemas is None:
            entry_points = project.get("entry-points", {}).get("sidemesh", {})
            schemas = list(_source_schemas(pyproject.parent, entry_points).items())
        found += [PluginSchema(n, distribution, version, s) for n, s in schemas]
    return sorted(found, key=lambda p: p.name)


def generate(root: Path) -> dict[Path, str]:
    """Each generated file's path and the text it should have."""
    from sidemesh.config.registry import core_schema

    return {
        root / CONFIG_REFERENCE: render_config_reference(core_schema(), repo_plugins(root)),
        root / HOOKS_REFERENCE: render_hooks_reference(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    if compiled.state().active:
        # The hooks reference is read from the sources (signatures, docstrings, "#:"
        # comments), which compiled modules do not carry: generate it interpreted.
        given = list(sys.argv[1:] if argv is None else argv)
        return subprocess.call(
            [sys.executable, "-m", "sidemesh.tools.docgen", *given],
            env={**os.environ, "SIDEMESH_COMPILED": "0"},
            timeout=300,
        )
    parser = argparse.ArgumentParser(
        prog="python -m sidemesh.tools.docgen",
        description="Write docs/config-reference.md and docs/hooks-reference.md from the "
        "JSON Schemas and the hook docstrings.",
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file is missing or stale")
    parser.add_argument("--root", type=Path, default=None, metavar="DIR",
                        help="the sidemesh checkout (default: the one this module is in)")
    args = parser.parse_args(argv)
    root: Path = args.root or _find_root()
    if not (root / "plugins").is_dir() or not (root / "pyproject.toml").is_file():
        print(f"docgen: {root} is not a sidemesh checkout (no plugins/ or pyproject.toml); "
              "give --root", file=sys.stderr)
        return 2
    stale = []
    for path, text in generate(root).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        relative = path.relative_to(root)
        if args.check:
            stale.append(str(relative))
            diff = difflib.unified_diff(
                (current or "").splitlines(keepends=True), text.splitlines(keepends=True),
                f"{relative} (committed)", f"{relative} (generated)", n=1,
            )
            sys.stderr.writelines(list(diff)[:60])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {relative}")
    if stale:
        print(f"docgen: stale: {', '.join(stale)}; run: python -m sidemesh.tools.docgen",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
