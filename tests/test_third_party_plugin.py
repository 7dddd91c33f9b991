"""The contract from outside: the example plugin, pip-installed like any third-party
package, is found through its entry point by a real `sidemesh` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from sidemesh.testing import ProxyProcess, Upstream, free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "header-policy"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
        check=True, timeout=180,
    )  # fmt: skip
    # Only the installed copy may be importable: not the source tree on pytest's path.
    paths = [p for p in sys.path if "header-policy" not in p]
    return {"PYTHONPATH": os.pathsep.join([str(target), *paths])}


def test_sidemesh_plugins_lists_the_installed_distribution(installed: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidemesh", "plugins", "--json"],
        env={**os.environ, **installed}, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["headers"]["distribution"] == "sidemesh-header-policy"
    assert plugins["headers"]["version"] == "0.4.0"


def test_the_installed_plugin_runs_in_a_proxy_chain(
    installed: dict[str, str], tmp_path: Path
) -> None:
    listen, admin = free_port(), free_port()
    with Upstream() as up:
        doc = {
            "node": {"service": "web"},
            "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "app", "endpoints": [{"address": up.address}]}],
            "listeners": [{
                "name": "in", "address": f"127.0.0.1:{listen}",
                "routes": [{
                    "name": "app", "match": {"prefix": "/"}, "cluster": "app",
                    "plugins": [{"name": "headers", "version": ">=0.1,<1",
                                 "config": {"deny_paths": ["/admin"], "add": {"x-env": "prod"}}}],
                }],
            }],
        }  # fmt: skip
        config = tmp_path / "sidemesh.yaml"
        config.write_text(yaml.safe_dump(doc))
        with ProxyProcess("proxy", "-c", str(config), env=installed) as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            assert httpx.get(f"http://127.0.0.1:{listen}/admin", timeout=5).status_code == 403
            assert httpx.get(f"http://127.0.0.1:{listen}/ok", timeout=5).status_code == 200
        assert [r.headers["x-env"] for r in up.requests] == ["prod"]


def test_a_version_constraint_the_plugin_does_not_meet_is_a_config_error(
    installed: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "sidemesh.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"service": "web"},
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "in", "address": "127.0.0.1:0", "routes": [{
            "name": "app", "match": {"prefix": "/"}, "cluster": "app",
            "plugins": [{"name": "headers", "version": ">=2"}]}]}],
    }))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "sidemesh", "validate", str(config)],
        env={**os.environ, **installed}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "headers" in out.stdout + out.stderr and ">=2" in out.stdout + out.stderr
