"""The data path: every module a request runs through, compiled with mypyc, and a compiled
module used only where it is known to match its source.

Every module of this folder (but this one) is plain, fully typed Python that imports
nothing from the layers above it. mypyc compiles them into C extensions that run the
same code about twice as fast (bench/README.md has the figures). A compiled build comes
one of two ways:

* **Installed**: the platform wheel (``./dev wheels``; the hatch-mypyc build hook of the
  root pyproject.toml) puts each compiled module beside its source, where Python's import
  prefers it; pip records, upgrades and removes them with the rest of the package. The
  pure-Python wheel has none, and a sidecar then warns that it runs interpreted.
* **A checkout** (an editable install): ``python -m sidemesh.tools.build_compiled``
  (``./dev setup`` runs it) builds into the environment, not the source tree
  (``<sys.prefix>/sidemesh-compiled``, or ``$SIDEMESH_COMPILED_DIR``), next to a manifest
  of the sources it was built from. This package puts that build first on its
  ``__path__`` only when every compiled module's source is unchanged: an edited source is
  never shadowed by a stale build, it just runs interpreted until the next build.

``SIDEMESH_COMPILED=0`` runs everything interpreted, either way. ``sidemesh version`` and
``python -m sidemesh.tools.build_compiled --status`` say which path runs, and why.

A plugin's per-request modules are compiled the same two ways: its platform wheel (the
hatch-mypyc hook of its pyproject.toml) puts them beside its sources; a checkout's build
puts each plugin's in ``plugins/<package>/`` of the build directory, and
:class:`PluginBuilds` imports them from there on the same terms: all of a plugin's
compiled modules or none, and only while each one's source is unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["MANIFEST", "MODULES", "PLUGIN_BUILDS", "PluginBuilds", "State", "activate",
           "build_dir", "check", "fingerprint", "in_checkout", "plugin_check", "plugin_fingerprint",
           "state"]

MANIFEST = "manifest.json"
#: the folder of a checkout's build holding one folder per compiled plugin package.
PLUGIN_BUILDS = "plugins"
PACKAGE_DIR = Path(__file__).resolve().parent
#: every module of this folder; compiled together, so they call each other natively.
MODULES = tuple(sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"))
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))


@dataclass(frozen=True)
class State:
    """Whether the compiled request path is in use, and why (or why not); ``remedy`` says
    how to get it when it is not (empty when compiled, or interpreted on purpose)."""

    active: bool
    reason: str
    remedy: str = ""


_STATE = State(False, "not checked")


def in_checkout() -> bool:
    """Imported from a source checkout (core/sidemesh of the repository), not installed."""
    core = PACKAGE_DIR.parents[1]
    return core.name == "core" and (core.parent / "pyproject.toml").is_file()


def build_dir() -> Path:
    return Path(os.environ.get("SIDEMESH_COMPILED_DIR") or Path(sys.prefix, "sidemesh-compiled"))


def fingerprint() -> dict[str, object]:
    return {
        "python": EXT_SUFFIX,
        "sources": {
            name: hashlib.sha256((PACKAGE_DIR / f"{name}.py").read_bytes()).hexdigest()
            for name in MODULES
        },
    }


def check(directory: Path, honour_env: bool = True) -> State:
    """Whether the checkout's build in ``directory`` matches the sources."""
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


def plugin_fingerprint(source_dir: Path, modules: Sequence[str]) -> dict[str, object]:
    """What a plugin package's build is checked against: the Python it is for and the
    digest of each compiled module's source in ``source_dir`` (the package's folder)."""
    return {
        "python": EXT_SUFFIX,
        "sources": {
            name: hashlib.sha256((source_dir / f"{name}.py").read_bytes()).hexdigest()
            for name in modules
        },
    }


def plugin_check(package: str, directory: Path, source_dir: Path) -> State:
    """Whether the build of plugin ``package`` in ``directory`` (its folder of a checkout's
    build) matches the sources in ``source_dir``, and may be imported now."""
    try:
        built = json.loads((directory / MANIFEST).read_text())
        modules = list(built["sources"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return State(False, f"interpreted: no usable build of {package} in {directory}: {exc}")
    try:
        current = plugin_fingerprint(source_dir, modules)
    except OSError as exc:
        return State(False, f"interpreted: {exc}")
    if built.get("python") != current["python"]:
        return State(False, f"interpreted: the build is for {built.get('python')}")
    if built["sources"] != current["sources"]:
        assert isinstance(current["sources"], dict)
        changed = sorted(n for n, d in current["sources"].items() if built["sources"][n] != d)
        names = ", ".join(f"{name}.py" for name in changed)
        return State(False, f"interpreted: {names} changed since the build (rebuild it)")
    missing = [name for name in built.get("files") or [] if not (directory / name).is_file()]
    if missing:
        return State(False, f"interpreted: the build in {directory} lacks {', '.join(missing)}")
    # Compiled modules call their siblings' compiled code directly: one imported from
    # source already (the package was imported before sidemesh) rules the build out.
    early = sorted(name for name in modules if f"{package}.{name}" in sys.modules)
    if early:
        return State(False, f"interpreted: {package}.{early[0]} was imported before sidemesh")
    plural = "" if len(modules) == 1 else "s"
    return State(True, f"compiled: {len(modules)} module{plural} from {directory}")


class PluginBuilds(MetaPathFinder):
    """Imports the compiled modules of a checkout's plugin builds (in ``directory``), each
    plugin's whole build or none of it, decided at the first import of one of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: the verdict on each plugin package's build, once one of its modules was asked for.
        self.states: dict[str, State] = {}
        #: the top-level runtime library of each accepted build, by module name.
        self._shared: dict[str, Path] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if path is None:
            shared = self._shared.get(fullname)
            return None if shared is None else importlib.util.spec_from_file_location(
                fullname, shared)
        package, _, name = fullname.rpartition(".")
        build = self.directory / package
        compiled = build / package / f"{name}{EXT_SUFFIX}"
        if not package or "." in package or not compiled.is_file():
            return None
        verdict = self.states.get(package)
        if verdict is None:
            verdict = self.states[package] = plugin_check(package, build, Path(path[0]))
            if verdict.active:
                for library in build.glob(f"*{EXT_SUFFIX}"):
                    self._shared[library.name.removesuffix(EXT_SUFFIX)] = library
        if not verdict.active:
            return None
        return importlib.util.spec_from_file_location(fullname, compiled)


def _installed(beside: list[str]) -> State:
    """What an installed wheel brought: every module compiled, or none (the pure wheel)."""
    remedy = (f"install sidemesh's compiled wheel for {platform.python_implementation()} "
              f"{sys.version_info.major}.{sys.version_info.minor} on "
              f"{sysconfig.get_platform()} (the README's \"Wheels\")")
    if not beside:
        return State(False, "interpreted: installed from the pure-Python wheel, "
                            "which has no compiled modules", remedy)
    missing = sorted(set(MODULES) - set(beside))
    if missing:
        return State(False, f"interpreted: the installed wheel lacks the compiled "
                            f"{', '.join(missing)}", remedy)
    return State(True, f"compiled: {len(MODULES)} modules from the platform wheel")


class _Sources(MetaPathFinder):
    """Imports this folder's modules from their sources, passing over the compiled files
    beside them (Python's own finder would prefer those)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, PACKAGE_DIR / f"{name}.py")


def activate(package_path: list[str]) -> State:
    """Choose the compiled build to run, if any (before any module of this package is
    imported); called once, below."""
    global _STATE
    beside = [name for name in MODULES if (PACKAGE_DIR / f"{name}{EXT_SUFFIX}").is_file()]
    if os.environ.get("SIDEMESH_COMPILED", "1") == "0":
        _STATE = State(False, "interpreted: SIDEMESH_COMPILED=0")
    elif "SIDEMESH_COMPILED_DIR" in os.environ or in_checkout():
        directory = build_dir()
        _STATE = check(directory)
        if _STATE.active:
            # The runtime library every compiled module shares is a top-level module.
            sys.path.append(str(directory))
            package_path.insert(0, str(directory / "sidemesh" / "datapath"))
        else:
            _STATE = State(False, _STATE.reason, "`./dev setup` (or python -m "
                           "sidemesh.tools.build_compiled) compiles it")
        # Compiled files beside a checkout's sources are left by a wheel built in the tree
        # (the hook compiles in place) and go stale as the sources change: never used. A
        # fresh build comes before them on the path; without one they are passed over.
        beside = [] if _STATE.active else beside
    else:
        _STATE = _installed(beside)
    if beside and not _STATE.active:
        sys.meta_path.insert(0, _Sources())
    plugins = build_dir() / PLUGIN_BUILDS
    if os.environ.get("SIDEMESH_COMPILED", "1") != "0" and plugins.is_dir() and (
            "SIDEMESH_COMPILED_DIR" in os.environ or in_checkout()):
        sys.meta_path.insert(0, PluginBuilds(plugins))
    return _STATE


def state() -> State:
    return _STATE


activate(__path__)
