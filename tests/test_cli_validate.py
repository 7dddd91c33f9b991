"""`sidemesh validate` as a user runs it: the installed console script, real files, a
real plugin distribution on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

GOOD = """\
node: {service: productpage}
clusters:
  - name: reviews
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    plugins: [{name: faketracing}]
    routes:
      - name: reviews
        match: {host: reviews, prefix: /}
        cluster: reviews
        plugins:
          - {name: fakeretry, config: {attempts: 3}}
          - name: fakesplit
            config: {destinations: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]}
      - {name: other, cluster: reviews}
"""


def install_fakes(site: Path) -> Path:
    """A throw-away distribution whose entry point is tests/fake_policies.py."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(TESTS / "fake_policies.py", site / "sidemesh_cli_fakes.py")
    info = site / "sidemesh_cli_fakes-1.2.3.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sidemesh-cli-fakes\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[sidemesh]\nclifakes = sidemesh_cli_fakes\n")
    return site


def sidemesh(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("sidemesh")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from sidemesh.tools.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SIDEMESH_DEBUG", None)
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                            timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return install_fakes(tmp_path / "site")


def test_valid_file_says_ok_with_counts(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = sidemesh(site, "validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok {path} (1 listeners, 2 routes)"


def test_every_error_of_every_file_is_listed(site: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("attempts: 3", "attempts: 30").replace(
        "cluster: reviews\n        plugins", "cluster: ratingz\n        plugins").replace(
        "{name: faketracing}", "{name: faketracing, version: '>=2'}"))
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("node: {service: a\n")
    result = sidemesh(site, "validate", str(good), str(bad), str(syntax),
                      str(tmp_path / "missing.yaml"), str(tmp_path))
    assert result.returncode == 1
    out = result.stdout
    assert f"ok {good}" in out
    assert f"FAIL {bad} (3 errors)" in out
    assert ("listeners[0].routes[0].plugins[0].config.attempts: 30 is greater than the "
            "maximum of 10 [plugin fakeretry@1.2.3, rule maximum]") in out
    assert "listeners[0].routes[0].cluster: route 'reviews' names cluster 'ratingz'" in out
    assert ("listeners[0].plugins[0].version: requires faketracing >=2, but "
            "sidemesh-cli-fakes 1.2.3 is installed") in out
    assert f"{syntax}:2:1" in out
    assert "missing.yaml: cannot read: No such file or directory" in out
    assert f"FAIL {tmp_path} (1 error)" in out


def test_json_output(site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("name: fakesplit", "name: fakesplitt"))
    result = sidemesh(site, "validate", "--json", str(bad))
    assert result.returncode == 1
    (report,) = json.loads(result.stdout)
    assert report["ok"] is False
    (error,) = report["errors"]
    assert error["path"] == "listeners[0].routes[0].plugins[1].name"
    assert error["rule"] == "plugin"
    assert "did you mean 'fakesplit'?" in error["message"]


def test_binary_and_huge_files_are_errors(site: Path, tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\xff\xfe" * 10)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"a: " + b"x" * (5 * 1024 * 1024))
    result = sidemesh(site, "validate", str(binary), str(huge))
    assert result.returncode == 1
    assert "not UTF-8" in result.stdout and "more than" in result.stdout


def test_validate_does_not_import_the_data_path(site: Path) -> None:
    code = ("import sys; from sidemesh.tools.cli import build_parser; "
            "from sidemesh.config import registry, validate; "
            "print(sorted(m for m in sys.modules if m in ('sidemesh.process.runtime', "
            "'sidemesh.control', 'uvicorn', 'starlette')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(site)})
    assert result.stdout.strip() == "[]", result.stderr
