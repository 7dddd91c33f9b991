"""The core wheel as users get it: built from this checkout, it carries the one core
schema, the license and the version of ``sidemesh/_version.py``, and nothing that is not
the ``sidemesh`` package (no tests, no demo, no plugins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from sidemesh import __version__

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_IN_WHEEL = "sidemesh/schemas/sidemesh.schema.json"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Without build isolation: offline, and the build backend is a dev dependency.
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("sidemesh-*.whl")
    return found


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_the_wheel_is_the_version_of_version_py(wheel: Path) -> None:
    assert wheel.name == f"sidemesh-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"sidemesh-{__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {__version__}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata


def test_the_wheel_carries_the_one_core_schema_and_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        schema = json.loads(z.read(SCHEMA_IN_WHEEL))
        license_text = z.read(f"sidemesh-{__version__}.dist-info/licenses/LICENSE").decode()
    assert schema == json.loads((ROOT / "schemas" / "sidemesh.schema.json").read_text())
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_the_wheel_holds_the_sidemesh_package_only(wheel: Path) -> None:
    dist_info = f"sidemesh-{__version__}.dist-info"
    strays = []
    for name in _names(wheel):
        path = PurePosixPath(name)
        python = path.suffix == ".py"
        tests = python and "tests" in path.parts[:-1]
        test_module = python and (path.name == "conftest.py" or path.name.startswith("test_"))
        demo = any(part.startswith(("demo", "sidemesh_demo")) for part in path.parts)
        if path.parts[0] not in ("sidemesh", dist_info) or tests or test_module or demo:
            strays.append(name)
        if "__pycache__" in path.parts:
            strays.append(name)
    assert not strays, f"not part of the core wheel: {strays}"
    # The scaffold's templates (a tests/ folder among them) are package data, and ship.
    assert "sidemesh/tools/templates/plugin/pyproject.toml.tmpl" in _names(wheel)


def test_core_schema_loads_from_the_installed_wheel(wheel: Path) -> None:
    # The wheel imported straight from its zip, without site processing (so without the
    # editable install's .pth) and with no sources on the path: the schema can only come
    # from inside the wheel, the checkout's schemas/ is not next to it.
    path = [p for p in sys.path if p and not (Path(p) / "sidemesh" / "__init__.py").is_file()]
    script = (
        "import json, sidemesh\n"
        "from sidemesh.config.registry import core_schema\n"
        "print(json.dumps({'file': sidemesh.__file__, 'schema': core_schema()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(wheel), *path]),
           "SIDEMESH_COMPILED": "0"}  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-S", "-c", script],
        env=env, cwd=wheel.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    loaded = json.loads(ran.stdout)
    assert loaded["file"].startswith(str(wheel))
    assert loaded["schema"] == json.loads((ROOT / "schemas" / "sidemesh.schema.json").read_text())
