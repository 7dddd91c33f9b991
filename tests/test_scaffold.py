"""`sidemesh new-plugin`: the scaffolded distribution installs like any third-party
package, its own tests pass unchanged, and a sidemesh process finds it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidemesh import __version__
from sidemesh.tools.cli import main
from sidemesh.tools.scaffold import api_requirement

NAME = "stamp-header"
DIST = "sidemesh-stamp-header"


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env={**os.environ, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The scaffolded plugin, pip-installed into a directory of its own."""
    work = tmp_path_factory.mktemp("scaffold")
    created = _run("-m", "sidemesh", "new-plugin", NAME, "--dir", str(work))
    assert created.returncode == 0, created.stderr
    source = work / DIST
    target = work / "site"
    pip = _run("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--target", str(target), str(source), timeout=180)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return source, {"PYTHONPATH": str(target)}


def test_the_distribution_has_every_file_a_plugin_needs(
    installed: tuple[Path, dict[str, str]],
) -> None:
    source, _ = installed
    files = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml", "README.md", "CHANGELOG.md",
        "sidemesh_stamp_header/__init__.py", "sidemesh_stamp_header/plugin.py",
        "sidemesh_stamp_header/schema.json", "sidemesh_stamp_header/py.typed",
        "tests/test_stamp_header.py",
    }  # fmt: skip
    pyproject = (source / "pyproject.toml").read_text()
    assert f'name = "{DIST}"' in pyproject
    assert f'dependencies = ["{api_requirement(__version__)}"]' in pyproject
    assert '[project.entry-points.sidemesh]\nstamp-header = "sidemesh_stamp_header.plugin"' in (
        pyproject
    )
    assert "{{" not in "".join((source / f).read_text() for f in files)


def test_the_generated_code_uses_only_the_public_api(
    installed: tuple[Path, dict[str, str]],
) -> None:
    # What the pin covers: `import sidemesh` and `from sidemesh import testing`, nothing
    # behind them (a new plugin copies these files, so they set the example).
    source, _ = installed
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "from sidemesh." not in text and "import sidemesh." not in text, path


def test_the_plugin_pins_the_minor_series_of_the_public_api() -> None:
    assert api_requirement("0.3.0") == "sidemesh>=0.3,<0.4"
    assert api_requirement("0.10.3") == "sidemesh>=0.10,<0.11"
    assert api_requirement("0.3.0rc1") == "sidemesh>=0.3,<0.4"


def test_the_schema_documents_and_bounds_every_property(
    installed: tuple[Path, dict[str, str]],
) -> None:
    source, _ = installed
    schema = json.loads((source / "sidemesh_stamp_header" / "schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["$id"] == f"https://sidemesh.dev/schemas/plugins/{NAME}.json"
    for name, prop in schema["properties"].items():
        assert prop["description"] and "default" in prop, name
        if prop["type"] == "string":
            assert "pattern" in prop and "maxLength" in prop, name


def test_the_generated_tests_pass_against_the_installed_plugin(
    installed: tuple[Path, dict[str, str]],
) -> None:
    source, env = installed
    result = _run("-m", "pytest", str(source / "tests"), "-p", "no:cacheprovider", "-q",
                  env=env, cwd=source, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_sidemesh_plugins_lists_it_with_its_version_and_hooks(
    installed: tuple[Path, dict[str, str]],
) -> None:
    _, env = installed
    result = _run("-m", "sidemesh", "plugins", "--json", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins[NAME]["distribution"] == DIST
    assert plugins[NAME]["version"] == "0.1.0"
    assert "on_response" in plugins[NAME]["hooks"]


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
                    reason="ruff is not installed next to this interpreter")
def test_the_generated_code_is_lint_clean(installed: tuple[Path, dict[str, str]]) -> None:
    source, _ = installed
    ruff = str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--isolated", "--line-length", "100", "--target-version", "py311",
         "--select", "E,F,W,I,B,UP,SIM,RUF", str(source)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Retry2", "invalid plugin name"),
        ("two__underscores", "invalid plugin name"),
        ("has space", "invalid plugin name"),
        ("sidemesh-thing", "without the 'sidemesh' prefix"),
    ],
)
def test_bad_names_are_refused_with_a_reason(
    name: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 1
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_name_of_an_installed_plugin_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = [ep.name for ep in importlib.metadata.entry_points(group="sidemesh")]
    if not taken:
        pytest.skip("no sidemesh plugin is installed")
    assert main(["new-plugin", taken[0], "--dir", str(tmp_path)]) == 1
    assert "already installed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "sidemesh-mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["new-plugin", "mine", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
