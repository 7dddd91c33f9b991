"""GET /healthz and GET /metrics of the control plane: what a load balancer's probe and
a Prometheus scrape see, from a real server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from sidemesh import __version__
from sidemesh.control import app as control_app
from sidemesh.control.auth import issue_token
from sidemesh.control.openapi import openapi_document
from sidemesh.testing.control import ControlServer
from sidemesh.testing.etcd import EtcdTestCluster

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlServer]:
    with ControlServer(tmp_path) as server:
        yield server


def _config(prefix: str = "/") -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "in", "address": "127.0.0.1:0",
                       "routes": [{"name": "app", "match": {"prefix": prefix},
                                   "cluster": "app"}]}],
    }


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _scrape(cp: ControlServer) -> Samples:
    answer = httpx.get(f"{cp.url}/metrics", timeout=5)  # no token: as Prometheus scrapes
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a counter never incremented is absent, which is 0."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait_for(cp: ControlServer, value: float, name: str, **labels: str) -> None:
    deadline = time.monotonic() + 10
    while (got := _value(_scrape(cp), name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name}{labels} is {got}, not {value}"
        time.sleep(0.02)


def _documented(path: str, status: int, body: Any) -> None:
    """``body`` is what the OpenAPI document says ``GET path`` answers with ``status``."""
    spec = openapi_document()
    operation = spec["paths"][path]["get"]
    assert operation["security"] == []
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": spec["components"]}).validate(body)


# /healthz ------------------------------------------------------------------------------
def test_healthz_answers_without_a_token(cp: ControlServer) -> None:
    answer = httpx.get(f"{cp.url}/healthz", timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "store": "sqlite", "version": __version__}
    _documented("/healthz", 200, answer.json())


def test_healthz_is_503_when_the_store_cannot_read(cp: ControlServer) -> None:
    # The control plane's own connection to the SQLite file is gone.
    cp.call(cp.store.close())
    answer = httpx.get(f"{cp.url}/healthz", timeout=5)
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unavailable", "store": "sqlite", "version": __version__,
        "error": "the store cannot read: Cannot operate on a closed database."}
    _documented("/healthz", 503, answer.json())
    assert _value(_scrape(cp), "sidemesh_control_store_errors_total", operation="ping") == 1


def test_healthz_is_503_when_the_store_does_not_answer_in_time(
        cp: ControlServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang() -> None:
        await asyncio.sleep(3600)  # as etcd without a quorum: no answer, no error

    monkeypatch.setattr(control_app, "HEALTH_TIMEOUT", 0.2)
    monkeypatch.setattr(cp.store, "ping", hang)
    started = time.monotonic()
    answer = httpx.get(f"{cp.url}/healthz", timeout=5)
    assert answer.status_code == 503 and time.monotonic() - started < 3
    assert answer.json() == {"status": "unavailable", "store": "sqlite", "version": __version__,
                             "error": "the store did not answer within 0.2s"}


def test_healthz_on_etcd_is_503_while_the_cluster_has_no_quorum(tmp_path: Path) -> None:
    with (EtcdTestCluster(tmp_path / "etcd", members=3) as etcd,
          ControlServer(tmp_path / "cp", store=etcd.store_url) as cp):
        url = f"{cp.url}/healthz"
        assert httpx.get(url, timeout=5).json() == {"status": "ok", "store": "etcd",
                                                     "version": __version__}
        etcd.kill(1)
        etcd.kill(2)
        started = time.monotonic()
        answer = httpx.get(url, timeout=10)
        # within the bound, however long etcd's client would have waited
        assert time.monotonic() - started < control_app.HEALTH_TIMEOUT + 1
        assert answer.status_code == 503, answer.text
        assert answer.json()["status"] == "unavailable" and answer.json()["error"]
        etcd.start(1)
        etcd.start(2)
        deadline = time.monotonic() + 30
        while httpx.get(url, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "healthz did not recover with the quorum"
            time.sleep(0.1)


# /metrics ------------------------------------------------------------------------------
def test_metrics_count_writes_pushes_reports_and_certificates(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web"
    web = cp.headers("web")
    assert httpx.put(f"{url}/config", json=_config(), headers=cp.admin, timeout=5
                     ).json()["version"] == 1
    assert httpx.put(f"{url}/config", json=_config(), headers=cp.admin, timeout=5
                     ).json()["unchanged"] is True
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(httpx.get, f"{url}/watch", params={"after": 1, "timeout": 30},
                           headers=web, timeout=35)
        _wait_for(cp, 1, "sidemesh_control_watchers", service="web")
        assert httpx.put(f"{url}/config", json=_config("/b"), headers=cp.admin,
                         timeout=5).json()["version"] == 2
        woken = poll.result(timeout=10)
    assert woken.status_code == 200 and woken.json()["version"] == 2
    assert httpx.post(f"{url}/rollback", json={"version": 1}, headers=cp.admin,
                      timeout=5).status_code == 200
    for state in ("ACK", "ACK", "NACK"):
        report = {"service": "web", "state": state, "version": 2, "plugins": []}
        assert httpx.post(f"{cp.url}/v1/proxies/web-1/status", json=report, headers=web,
                          timeout=5).status_code == 200
    assert httpx.post(f"{cp.url}/v1/certificates", json={"csr": _csr()}, headers=web,
                      timeout=10).status_code == 200
    assert httpx.post(f"{cp.url}/v1/certificates", json={"csr": "junk"}, headers=web,
                      timeout=10).status_code == 422

    samples = _scrape(cp)
    expected = {
        ("sidemesh_control_config_writes_total", "put"): 2,  # the unchanged PUT is none
        ("sidemesh_control_config_writes_total", "rollback"): 1,
    }
    for (name, kind), count in expected.items():
        assert _value(samples, name, service="web", kind=kind) == count
    assert _value(samples, "sidemesh_control_watchers", service="web") == 0
    assert _value(samples, "sidemesh_control_pushes_total", service="web") == 1
    assert _value(samples, "sidemesh_control_acks_total", service="web") == 2
    assert _value(samples, "sidemesh_control_nacks_total", service="web") == 1
    assert _value(samples, "sidemesh_control_certificates_issued_total",
                  trust_domain="cluster.local") == 1
    assert _value(samples, "sidemesh_control_certificate_errors_total") == 1
    # every store call the API made, by method: three PUTs, one rollback
    assert _value(samples, "sidemesh_control_store_seconds_count",
                  operation="put_config") == 3
    assert _value(samples, "sidemesh_control_store_seconds_count", operation="rollback") == 1
    assert _value(samples, "sidemesh_control_store_seconds_count", operation="get_config") > 3
    assert _value(samples, "sidemesh_control_store_errors_total", operation="put_config") == 0


def test_refused_tokens_are_counted_by_reason(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web/config"
    token = cp.token("web")
    expiring = cp.call(issue_token(cp.store, "web", ttl=0.05))
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=5
                     ).status_code == 401
    token_id = token.split(".")[1]
    assert httpx.delete(f"{cp.url}/v1/tokens/{token_id}", headers=cp.admin, timeout=5
                        ).status_code == 200
    time.sleep(0.1)
    for refused in (token, expiring):
        assert httpx.get(url, headers={"authorization": f"Bearer {refused}"}, timeout=5
                         ).status_code == 401
    samples = _scrape(cp)
    for reason in ("missing", "invalid", "revoked", "expired"):
        assert _value(samples, "sidemesh_control_tokens_refused_total", reason=reason) == 1


def test_the_watchers_gauge_drops_when_a_client_disconnects_mid_poll(
        cp: ControlServer) -> None:
    host, port = cp.url.removeprefix("http://").split(":")
    request = (f"GET /v1/services/web/watch?after=0&timeout=120 HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {cp.token('web')}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(request)
        _wait_for(cp, 1, "sidemesh_control_watchers", service="web")
    # Well before the poll's 120 s: the control plane stops waiting for nobody.
    _wait_for(cp, 0, "sidemesh_control_watchers", service="web")


def test_the_watchers_gauge_drops_when_a_poll_ends_in_an_error(cp: ControlServer) -> None:
    token = cp.token("web")
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(httpx.get, f"{cp.url}/v1/services/web/watch",
                           params={"after": 0, "timeout": 60},
                           headers={"authorization": f"Bearer {token}"}, timeout=65)
        _wait_for(cp, 1, "sidemesh_control_watchers", service="web")
        assert httpx.delete(f"{cp.url}/v1/tokens/{token.split('.')[1]}", headers=cp.admin,
                            timeout=5).status_code == 200
        assert poll.result(timeout=10).status_code == 401
    _wait_for(cp, 0, "sidemesh_control_watchers", service="web")


def test_each_control_plane_counts_its_own(tmp_path: Path) -> None:
    with ControlServer(tmp_path / "a") as a, ControlServer(tmp_path / "b") as b:
        assert httpx.put(f"{a.url}/v1/services/web/config", json=_config(), headers=a.admin,
                         timeout=5).status_code == 200
        labels = {"service": "web", "kind": "put"}
        assert _value(_scrape(a), "sidemesh_control_config_writes_total", **labels) == 1
        assert _value(_scrape(b), "sidemesh_control_config_writes_total", **labels) == 0
