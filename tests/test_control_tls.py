"""HTTPS on the control API (issue 15): real `sidemesh control` and `sidemesh proxy`
processes; the sidecar trusts the control plane only through the bundle it was given."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sidemesh import testing


def _print_ca(data: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sidemesh", "control", "--data", str(data), "--print-ca"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("-----BEGIN CERTIFICATE-----")
    return result.stdout


def _config(upstream: str) -> dict[str, object]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{testing.free_port()}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": f"127.0.0.1:{testing.free_port()}",
                "routes": [{"name": "app", "match": {"prefix": "/"}, "cluster": "app"}],
            }
        ],
    }


def test_sidecar_follows_an_https_control_plane_it_trusts_and_refuses_another(
    tmp_path: Path,
) -> None:
    data = tmp_path / "cp"
    ca = tmp_path / "ca.pem"
    ca.write_text(_print_ca(data))
    port = testing.free_port()
    url = f"https://127.0.0.1:{port}"
    with testing.ProxyProcess(
        "control", "--data", str(data), "--listen", f"127.0.0.1:{port}", "--tls"
    ) as control:
        context = ssl.create_default_context(cafile=str(ca))
        admin = {"authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
        assert testing.wait_for(lambda: _answers(url, context), timeout=20), control.output
        # Plain HTTP to it is no answer at all.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v1/proxies", headers=admin, timeout=5)
        with testing.Upstream() as app:
            doc = _config(app.address)
            put = httpx.put(
                f"{url}/v1/services/web/config", json=doc, headers=admin, verify=context, timeout=10
            )
            assert put.status_code == 200, put.text
            token = tmp_path / "web.token"
            token.write_text(
                httpx.post(
                    f"{url}/v1/tokens",
                    json={"service": "web"},
                    headers=admin,
                    verify=context,
                    timeout=10,
                ).json()["token"]
            )
            common = ["proxy", "--control", url, "--service", "web", "--token-file", str(token)]
            with testing.ProxyProcess(
                *common, "--control-ca", str(ca), "--state-dir", str(tmp_path / "good")
            ) as good:
                good.wait_http(f"http://{doc['admin']}/ready", timeout=30)
            # A bundle from another control plane: the sidecar refuses to connect.
            other = tmp_path / "other.pem"
            other.write_text(_print_ca(tmp_path / "other-cp"))
            with testing.ProxyProcess(
                *common, "--control-ca", str(other), "--state-dir", str(tmp_path / "bad")
            ) as bad:
                assert testing.wait_for(
                    lambda: "does not trust, refusing to connect" in bad.output, timeout=20
                ), bad.output
                # Nothing applied: the admin API (and every listener) never came up.
                assert not _listening(str(doc["admin"]))


def _answers(url: str, context: ssl.SSLContext) -> bool:
    try:
        return httpx.get(f"{url}/v1/proxies", verify=context, timeout=2).status_code == 401
    except httpx.HTTPError:
        return False


def _listening(address: str) -> bool:
    try:
        httpx.get(f"http://{address}/ready", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_a_non_loopback_listen_serves_https_unless_told_otherwise(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    ca = tmp_path / "ca.pem"
    ca.write_text(_print_ca(data))
    port = testing.free_port()
    with testing.ProxyProcess("control", "--data", str(data), "--listen", f"0.0.0.0:{port}"):
        context = ssl.create_default_context(cafile=str(ca))
        assert testing.wait_for(lambda: _answers(f"https://127.0.0.1:{port}", context), timeout=20)
    port = testing.free_port()
    with testing.ProxyProcess(
        "control", "--data", str(data), "--listen", f"0.0.0.0:{port}", "--insecure-http"
    ) as plain:
        assert testing.wait_for(lambda: "clear text" in plain.output, timeout=20), plain.output
        # The warning is printed before the socket is bound: wait for it to answer.
        assert testing.wait_for(lambda: _listening(f"127.0.0.1:{port}"), timeout=20)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/proxies", timeout=5).status_code == 401


def test_the_config_file_names_the_control_planes_ca(tmp_path: Path) -> None:
    doc = _config("127.0.0.1:9")
    doc["control"] = {"url": "https://cp.example:15010", "ca_file": str(tmp_path / "ca.pem")}
    config = testing.build_config(doc)
    assert config.control is not None and config.control.ca_file == str(tmp_path / "ca.pem")
