"""``sidemesh new-plugin NAME``: a new plugin distribution, ready to test and publish.

The files come from ``templates/plugin/`` next to this module (so an installed sidemesh
can scaffold without a checkout). Placeholders are ``{{key}}`` replaced literally: the
templates are Python, TOML and JSON full of ``{}`` and ``$``, which any real templating
syntax would have to escape.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import keyword
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from packaging.version import Version

from sidemesh import __version__

__all__ = ["Scaffold", "ScaffoldError", "api_requirement", "main", "scaffold", "validate_name"]

#: Lower-case words joined by single ``-`` or ``_``: a valid policy name, distribution
#: suffix and (with ``-`` as ``_``) a Python identifier.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*([_-][a-z0-9]+)*$")
MAX_NAME = 40
TEMPLATE_SUFFIX = ".tmpl"


class ScaffoldError(Exception):
    """A name or target the scaffold refuses; the message says why."""


@dataclass(frozen=True)
class Scaffold:
    """The names one plugin is known by."""

    name: str
    dist: str
    package: str
    cls: str

    @classmethod
    def for_name(cls, name: str) -> Scaffold:
        validate_name(name)
        words = re.split(r"[_-]", name)
        return cls(
            name=name,
            dist="sidemesh-" + "-".join(words),
            package="sidemesh_" + "_".join(words),
            cls="".join(w.capitalize() for w in words) + "Policy",
        )

    def substitutions(self) -> dict[str, str]:
        return {
            "name": self.name,
            "dist": self.dist,
            "package": self.package,
            "class": self.cls,
            "date": datetime.date.today().isoformat(),
            "core_requirement": api_requirement(__version__),
        }

    def target_path(self, relative: str) -> str:
        """Where a template file lands in the new distribution."""
        if relative.startswith("package/"):
            relative = self.package + relative[len("package") :]
        if relative == "tests/test_plugin.py":
            relative = f"tests/test_{self.package.removeprefix('sidemesh_')}.py"
        return relative


def api_requirement(version: str) -> str:
    """The requirement a plugin built against sidemesh ``version`` declares: its minor
    series, ``sidemesh>=0.4,<0.5`` for 0.4.x (a minor version may break the public API
    while the major version is 0)."""
    major, minor = (*Version(version).release, 0)[:2]
    return f"sidemesh>={major}.{minor},<{major}.{minor + 1}"


def validate_name(name: str) -> None:
    """Raise :class:`ScaffoldError` unless ``name`` can be a plugin name."""
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, starting "
            "with a letter, words joined by single '-' or '_' (e.g. ratelimit, add-header)"
        )
    if len(name) > MAX_NAME:
        raise ScaffoldError(f"invalid plugin name {name!r}: at most {MAX_NAME} characters")
    if name.startswith("sidemesh"):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: give the name without the 'sidemesh' prefix "
            f"(the distribution is called sidemesh-NAME)"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"invalid plugin name {name!r}: a Python keyword")


def _installed_plugin(name: str) -> str | None:
    """The distribution already providing a plugin entry point called ``name``."""
    for ep in importlib.metadata.entry_points(group="sidemesh"):
        if ep.name == name:
            return f"{ep.dist.metadata['Name']} {ep.dist.version}" if ep.dist else "?"
    return None


def _templates() -> Iterator[tuple[str, Traversable]]:
    root = resources.files("sidemesh.tools").joinpath("templates/plugin")

    def walk(node: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            relative = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    yield from walk(child, relative + "/")
            else:
                yield relative.removesuffix(TEMPLATE_SUFFIX), child

    yield from walk(root, "")


def scaffold(name: str, directory: Path) -> Path:
    """Write the distribution ``sidemesh-NAME`` under ``directory``; return its path."""
    names = Scaffold.for_name(name)
    installed = _installed_plugin(name)
    if installed is not None:
        raise ScaffoldError(
            f"a plugin called {name!r} is already installed ({installed}); two plugins "
            "with one name make both unusable: pick another name"
        )
    if directory.exists() and not directory.is_dir():
        raise ScaffoldError(f"{directory} is not a directory")
    destination = directory / names.dist
    if destination.exists():
        raise ScaffoldError(f"{destination} already exists; remove it or pick another --dir")
    values = names.substitutions()
    files: dict[Path, bytes] = {}
    for relative, template in _templates():
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        files[destination / names.target_path(relative)] = text.encode("utf-8")
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return destination


def main(args: argparse.Namespace) -> int:
    """Entry of ``sidemesh new-plugin``: ``args`` has ``name`` and ``dir``."""
    try:
        destination = scaffold(args.name, Path(args.dir))
    except (ScaffoldError, OSError) as exc:
        print(f"sidemesh new-plugin: {exc}", file=sys.stderr)
        return 1
    names = Scaffold.for_name(args.name)
    print(f"created {destination}/ ({names.dist}, policy {names.name!r}, package {names.package})")
    print("next:")
    print(f"  cd {destination}")
    print('  pip install -e ".[test]"   # the tests find the plugin through its entry point')
    print("  pytest")
    print(f"  sidemesh schema {names.name}")
    return 0
