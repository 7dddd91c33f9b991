"""Every built-in plugin works unchanged on HTTP/2: an HTTP/2 client, a route with all
five plugins, and HTTP/2 over mTLS (ALPN h2) to the next listener (Istio's
h2UpgradePolicy: UPGRADE between sidecars), then HTTP/1.1 to the application."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh.testing import ProxyProcess, Upstream, free_port

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = "spiffe://cluster.local/ns/default/sa/app"


@pytest.fixture
def certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(ROOT))
    issued: Path = importlib.import_module("bench.certs").issue_certificates(
        tmp_path / "certs", services=("app",))
    return issued


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


def _config(certs: Path, upstream: Upstream, dead: str) -> tuple[dict[str, Any], str, str]:
    outbound, inbound, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
    tls = {"cert_file": str(certs / "app.crt"), "key_file": str(certs / "app.key"),
           "bundle_file": str(certs / "bundle.pem")}
    config = {
        "node": {"service": "app", "namespace": "default"},
        "admin": admin,
        "clusters": [
            # A dead endpoint beside the live one: retry moves on from it, the circuit
            # breaker ejects it.
            {"name": "inbound", "protocol": "http2", "load_balancer": "round_robin",
             "endpoints": [{"address": dead, "labels": {"v": "1"}},
                           {"address": inbound, "labels": {"v": "1"}}],
             "subsets": [{"name": "v1", "labels": {"v": "1"}}]},
            {"name": "app", "endpoints": [{"address": upstream.address}]},
        ],
        "listeners": [
            {"name": "outbound", "address": outbound, "routes": [
                {"name": "to-inbound", "match": {"prefix": "/"}, "cluster": "inbound",
                 "plugins": [
                     {"name": "tracing", "config": {"sampling": 1.0}},
                     {"name": "retry", "config": {"attempts": 3,
                                                  "retry_on": ["connect-failure"]}},
                     {"name": "circuit", "config": {"consecutive_5xx": 2,
                                                    "base_ejection_time": "1m",
                                                    "max_ejection_percent": 50}},
                     {"name": "split", "config": {"destinations": [{"subset": "v1"}]}},
                     {"name": "mtls", "config": {"expect": IDENTITY, **tls}},
                 ]},
            ]},
            {"name": "inbound", "address": inbound,
             "plugins": [{"name": "mtls", "config": {"mode": "strict", "allow": [IDENTITY],
                                                     **tls}}],
             "routes": [{"name": "app", "match": {"prefix": "/"}, "cluster": "app"}]},
        ],
    }
    return config, f"http://{outbound}", f"http://{admin}"


def test_all_five_plugins_run_unchanged_on_an_http2_route(
        tmp_path: Path, certs: Path, upstream: Upstream) -> None:
    config, url, admin = _config(certs, upstream, f"127.0.0.1:{free_port()}")
    path = tmp_path / "sidemesh.json"
    path.write_text(json.dumps(config))
    with ProxyProcess("proxy", "-c", str(path)) as sidecar:
        sidecar.wait_http(f"{admin}/ready")
        # Prior knowledge: HTTP/2 from the first byte, as gRPC clients speak it.
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            answers = [client.get(f"{url}/reviews/{i}") for i in range(12)]
        assert [(a.status_code, a.http_version, a.text) for a in answers] == \
            [(200, "HTTP/2", "ok")] * 12, sidecar.output
        clusters = httpx.get(f"{admin}/clusters", timeout=5).json()["clusters"]
        ejected = next(c for c in clusters if c["name"] == "inbound")["endpoints"]
        # The hop was mTLS: the strict inbound listener takes no plain HTTP/2.
        inbound_url = f"http://{config['listeners'][1]['address']}/"
        with httpx.Client(http1=False, http2=True, timeout=5) as client, \
                pytest.raises(httpx.TransportError):
            client.get(inbound_url)
    lines = [json.loads(line) for line in sidecar.output.splitlines()
             if line.startswith("{") and '"listener"' in line]
    outbound = [entry for entry in lines if entry["listener"] == "outbound"]
    inbound = [entry for entry in lines if entry["listener"] == "inbound"]
    # Both hops were HTTP/2; the application got HTTP/1.1 with the trace context.
    assert {e["protocol"] for e in outbound + inbound} == {"HTTP/2"}
    assert len(inbound) == 12
    assert all("traceparent" in r.headers for r in upstream.requests[-12:])
    # Retry: the dead endpoint's connect failures were retried on the live one ...
    assert max(e["attempts"] for e in outbound) == 2
    # ... until the circuit breaker ejected it: the last requests took one attempt.
    assert [e["attempts"] for e in outbound[-4:]] == [1, 1, 1, 1]
    assert any(e["ejected"] for e in ejected if e["address"] != config["listeners"][1][
        "address"]), ejected
