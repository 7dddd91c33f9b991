"""The data path: every module a request runs through, compiled with mypyc, and the
compiled build used only while it matches the sources.

Every module of this folder (but this one) is plain, fully typed Python that imports
nothing from the layers above it. mypyc compiles them into C extensions that run the
same code about 1.5x faster (bench/README.md has the figures). The build lives in the
environment, not in the source tree
(``<sys.prefix>/sidemesh-compiled``, or ``$SIDEMESH_COMPILED_DIR``), next to a manifest
of the sources it was built from. At import this package puts the build first on its
``__path__`` only when every compiled module's source is unchanged: an edited source is
never shadowed by a stale build, it just runs interpreted until the next build.
``SIDEMESH_COMPILED=0`` runs everything interpreted.

``python -m sidemesh.tools.build_compiled`` (``./dev setup`` runs it) makes or refreshes the
build; ``--status`` says whether it is in use, and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MANIFEST", "MODULES", "State", "activate", "build_dir", "check", "fingerprint", "state"]

MANIFEST = "manifest.json"
PACKAGE_DIR = Path(__file__).resolve().parent
#: every module of this folder; compiled together, so they call each other natively.
MODULES = tuple(sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"))


@dataclass(frozen=True)
class State:
    """Whether the compiled request path is in use, and why (or why not)."""

    active: bool
    reason: str


_STATE = State(False, "not checked")


def build_dir() -> Path:
    return Path(os.environ.get("SIDEMESH_COMPILED_DIR") or Path(sys.prefix, "sidemesh-compiled"))


def fingerprint() -> dict[str, object]:
    return {
        "python": sysconfig.get_config_var("EXT_SUFFIX"),
        "sources": {
            name: hashlib.sha256((PACKAGE_DIR / f"{name}.py").read_bytes()).hexdigest()
            for name in MODULES
        },
    }


def check(directory: Path, honour_env: bool = True) -> State:
    if honour_env and os.environ.get("SIDEMESH_COMPILED", "1") == "0":
        return State(False, "interpreted: SIDEMESH_COMPILED=0")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return State(False, f"interpreted: no compiled build in {directory}")
    try:
        built = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return State(False, f"interpreted: unreadable manifest {manifest_path}: {exc}")
    current = fingerprint()
    if built.get("python") != current["python"]:
        return State(False, f"interpreted: the build is for {built.get('python')}")
    sources = built.get("sources") or {}
    assert isinstance(current["sources"], dict)
    changed = sorted(n for n, digest in current["sources"].items() if sources.get(n) != digest)
    if changed:
        names = ", ".join(f"{name}.py" for name in changed)
        return State(False, f"interpreted: {names} changed since the build (rebuild it)")
    missing = [name for name in built.get("files") or [] if not (directory / name).is_file()]
    if missing:
        return State(False, f"interpreted: the build in {directory} lacks {', '.join(missing)}")
    return State(True, f"compiled: {len(MODULES)} modules from {directory}")


def activate(package_path: list[str]) -> State:
    """Put a fresh build first on this package's ``__path__`` (before any of its
    modules is imported); called once, below."""
    global _STATE
    directory = build_dir()
    _STATE = check(directory)
    if _STATE.active:
        # The runtime library every compiled module shares is a top-level module.
        sys.path.append(str(directory))
        package_path.insert(0, str(directory / "sidemesh" / "datapath"))
    return _STATE


def state() -> State:
    return _STATE


activate(__path__)
