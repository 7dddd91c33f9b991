"""The compiled data path (every module of core/sidemesh/datapath/): used when its build
matches the sources, never when not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import sidemesh
import sidemesh.datapath as compiled
import sidemesh.datapath.forward

PROBE = (
    "import sidemesh, sidemesh.datapath as c, sidemesh.datapath.forward as f\n"
    "print(c.state().active, c.state().reason, sep='|')\n"
    "print(c.__path__[0]); print(f.__file__)\n"
)


def _probe(build: Path, **env: str) -> tuple[bool, str, str, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "SIDEMESH_COMPILED_DIR": str(build), "SIDEMESH_COMPILED": "1", **env},
        capture_output=True, text=True, timeout=60, check=True,
    )
    first, package_path, forward_file = result.stdout.splitlines()
    active, reason = first.split("|", 1)
    return active == "True", reason, package_path, forward_file


def _fake_build(tmp_path: Path, manifest: dict[str, object]) -> Path:
    build = tmp_path / "build"
    (build / "sidemesh" / "datapath").mkdir(parents=True)
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    # Not a loadable extension: if this build were put on the path, importing
    # sidemesh.datapath.forward would fail, so the probe proves which files ran.
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (build / "sidemesh" / "datapath" / f"forward{suffix}").write_bytes(b"not an extension")
    return build


def test_a_build_older_than_a_source_is_not_used(tmp_path: Path) -> None:
    manifest = compiled.fingerprint()
    sources = manifest["sources"]
    assert isinstance(sources, dict)
    sources["forward"] = "0" * 64
    active, reason, package_path, forward_file = _probe(_fake_build(tmp_path, manifest))
    assert not active
    assert "forward.py changed since the build" in reason
    assert forward_file.endswith("forward.py")
    assert not package_path.startswith(str(tmp_path))


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    manifest = {**compiled.fingerprint(), "python": ".cpython-399-other.so"}
    active, reason, _, forward_file = _probe(_fake_build(tmp_path, manifest))
    assert not active and "the build is for .cpython-399-other.so" in reason
    assert forward_file.endswith("forward.py")


def test_a_matching_build_comes_first_on_the_package_path(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "sidemesh" / "datapath").mkdir(parents=True)
    (build / compiled.MANIFEST).write_text(json.dumps(compiled.fingerprint()))
    active, reason, package_path, forward_file = _probe(build)
    assert active and reason.startswith(f"compiled: {len(compiled.MODULES)} modules")
    assert package_path == str(build / "sidemesh" / "datapath")
    # this build holds no module, so the sources behind it are found
    assert forward_file.endswith("forward.py")


def test_a_build_missing_a_file_is_not_used(tmp_path: Path) -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    files = [f"sidemesh/datapath/forward{suffix}", f"sidemesh/datapath/pool{suffix}"]
    manifest = {**compiled.fingerprint(), "files": files}
    active, reason, _, forward_file = _probe(_fake_build(tmp_path, manifest))
    assert not active and reason.endswith(f"lacks sidemesh/datapath/pool{suffix}")
    assert forward_file.endswith("forward.py")


def test_sidemesh_compiled_0_runs_interpreted(tmp_path: Path) -> None:
    build = _fake_build(tmp_path, compiled.fingerprint())
    active, reason, _, forward_file = _probe(build, SIDEMESH_COMPILED="0")
    assert not active and "SIDEMESH_COMPILED=0" in reason
    assert forward_file.endswith("forward.py")


@pytest.mark.skipif(
    os.environ.get("SIDEMESH_EXPECT_COMPILED") != "1",
    reason="CI sets SIDEMESH_EXPECT_COMPILED=1; elsewhere a missing compiler is allowed",
)
def test_ci_runs_the_compiled_request_path() -> None:
    assert compiled.state().active, compiled.state().reason
    assert sidemesh.datapath.forward.__file__.endswith(sysconfig.get_config_var("EXT_SUFFIX"))


def test_every_module_of_the_datapath_folder_is_compiled() -> None:
    folder = Path(compiled.__file__).parent
    expected = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert list(compiled.MODULES) == expected
    assert {"messages", "forward", "downstream", "codec", "flags"} <= set(compiled.MODULES)


def _copy_with_a_stray_extension(tmp_path: Path, checkout: bool) -> Path:
    """core/sidemesh copied, with a compiled ``forward`` beside its source that is not a
    loadable extension (importing it would fail); with the checkout's pyproject.toml at
    its root or not (then it looks installed, as from a wheel)."""
    root = tmp_path / "copy"
    package = Path(sidemesh.__file__).parent
    shutil.copytree(package, root / "core" / "sidemesh",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if checkout:
        (root / "pyproject.toml").write_text("")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (root / "core" / "sidemesh" / "datapath" / f"forward{suffix}").write_bytes(b"not loadable")
    return root / "core"


@pytest.mark.parametrize("checkout", [True, False], ids=["checkout", "installed"])
def test_compiled_files_that_cannot_be_trusted_are_passed_over(
        tmp_path: Path, checkout: bool) -> None:
    path = _copy_with_a_stray_extension(tmp_path, checkout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMESH_COMPILED")}
    # A checkout with no build of its own, so only the stray file could make it compiled.
    env.update({"PYTHONPATH": str(path), "SIDEMESH_COMPILED_DIR": str(tmp_path / "none")}
               if checkout else {"PYTHONPATH": str(path)})
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=60, check=True, cwd=tmp_path)
    first, _, forward_file = result.stdout.splitlines()
    active, reason = first.split("|", 1)
    assert active == "False" and forward_file == str(path / "sidemesh/datapath/forward.py")
    if checkout:
        assert reason.startswith("interpreted: no compiled build in")
    else:
        assert reason.startswith("interpreted: the installed wheel lacks the compiled ")
