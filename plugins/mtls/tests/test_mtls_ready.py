"""`/ready` waits for the certificate of every mTLS policy (issue 13): the first clients
of a sidecar that said ready must not get TLS alerts. Real processes: a control plane,
a sidecar taking its identity from the control plane's CA with a token file."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from sidemesh import testing


def _config(tmp_path: Path, control: str, token_file: Path) -> Path:
    listen, admin = testing.free_port(), testing.free_port()
    doc = {
        "node": {"service": "reviews"},
        "admin": f"127.0.0.1:{admin}",
        "control": {"url": control, "token_file": str(token_file)},
        "clusters": [{"name": "local", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": f"127.0.0.1:{listen}",
                "plugins": [{"name": "mtls"}],
                "routes": [{"name": "local", "match": {"prefix": "/"}, "cluster": "local"}],
            }
        ],
    }
    path = tmp_path / "sidemesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_ready_only_once_the_certificate_is_served(tmp_path: Path) -> None:
    token_file = tmp_path / "reviews.token"
    token_file.write_text("not-a-token")
    with testing.control.ControlServer(tmp_path / "cp") as cp:
        config = _config(tmp_path, cp.url, token_file)
        admin = "http://" + yaml.safe_load(config.read_text())["admin"]
        with testing.ProxyProcess("proxy", "-c", str(config)) as proc:
            proc.wait_http(admin + "/ready", status=503)
            answer = httpx.get(admin + "/ready", timeout=5).json()
            assert answer["ready"] is False
            assert "mtls: no certificate yet from control plane" in answer["reason"]
            assert testing.wait_for(
                lambda: "401" in (httpx.get(admin + "/ready", timeout=5).json()["reason"] or "")
            )
            # The token is read anew for each certificate request: fixing the file heals.
            token_file.write_text(cp.token("reviews"))
            proc.wait_http(admin + "/ready", timeout=30)
            assert httpx.get(admin + "/ready", timeout=5).json()["ready"] is True
