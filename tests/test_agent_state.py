"""A sidecar started while the control plane is down serves its last applied config
from disk, then follows the control plane once it is back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for


def _config(upstream: str, listen: int, admin: int) -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "in", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }


def test_last_known_good_config_is_served_while_the_control_plane_is_down(
    tmp_path: Path,
) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    listen, admin_port, cp_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{cp_port}"
    admin = f"http://127.0.0.1:{admin_port}"
    control_args = ("control", "--data", str(data), "--listen", f"127.0.0.1:{cp_port}")
    with Upstream(lambda _: Reply(body=b"one")) as one, \
            Upstream(lambda _: Reply(body=b"two")) as two:
        with ProxyProcess(*control_args) as control:
            control.wait_http(url + "/openapi.json", status=401)
            assert "admin token created in" in control.output
            headers = {"authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
            assert (data / "admin.token").stat().st_mode & 0o777 == 0o600
            put = httpx.put(f"{url}/v1/services/web/config", headers=headers, timeout=5,
                            json=_config(one.address, listen, admin_port))
            assert put.json()["version"] == 1
            token = subprocess.run(
                [sys.executable, "-m", "sidemesh", "token", "--data", str(data), "--service",
                 "web"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            proxy_args = ("proxy", "--control", url, "--service", "web", "--state-dir",
                          str(state), "--access-log", "off")
            with ProxyProcess(*proxy_args, env={"SIDEMESH_TOKEN": token}) as first:
                first.wait_http(admin + "/ready")
                assert first.stop() == 0
            saved = json.loads((state / "web.json").read_text())
            assert saved["version"] == 1 and saved["service"] == "web"
        # control plane stopped: a new sidecar starts from the saved copy
        with ProxyProcess(*proxy_args, env={"SIDEMESH_TOKEN": token}) as second:
            second.wait_http(admin + "/ready")
            assert httpx.get(admin + "/config_dump", timeout=5).json()["version"] == "1"
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "one"
            assert "serving saved config 1" in second.output
            with ProxyProcess(*control_args) as control:
                control.wait_http(url + "/openapi.json", status=401)
                httpx.put(f"{url}/v1/services/web/config", headers=headers, timeout=5,
                          json=_config(two.address, listen, admin_port))
                assert wait_for(lambda: httpx.get(admin + "/config_dump", timeout=5).json()[
                    "version"] == "2", timeout=20), second.output
                assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "two"
            assert second.stop() == 0
            assert "stopped" in second.output


def test_a_sidecar_without_a_token_says_how_to_get_one(tmp_path: Path) -> None:
    with ProxyProcess("proxy", "--control", "http://127.0.0.1:9", "--service", "web",
                      "--state-dir", str(tmp_path), env={"SIDEMESH_TOKEN": ""}) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(30) == 2
        assert "sidemesh token --service NAME" in proc.output
