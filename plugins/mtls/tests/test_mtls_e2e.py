"""Two real sidecars with mTLS between them: productpage -> reviews -> app."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sidemesh_mtls_testkit import Pki, outbound_config, sid

from sidemesh import testing


def inbound_config(service: str, app: str, files: dict[str, str], **mtls: Any) -> dict[str, Any]:
    return {
        "node": {"service": service, "namespace": "default", "trust_domain": "cluster.local"},
        "clusters": [{"name": "local", "endpoints": [{"address": app}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": "127.0.0.1:0",
                "plugins": [{"name": "mtls", "config": {**mtls, **files}}],
                "routes": [{"name": "local", "match": {"prefix": "/"}, "cluster": "local"}],
            }
        ],
    }


@contextmanager
def mesh(
    pki: Pki, **inbound_mtls: Any
) -> Iterator[tuple[testing.Upstream, testing.RunningSidecar, str]]:
    """The app behind the reviews sidecar; yields the inbound address too."""
    files = pki.write(pki.issue("reviews"), "reviews")
    with testing.Upstream(lambda r: testing.Reply(body=b"reviews app")) as app:
        config = inbound_config("reviews", app.address, files, **inbound_mtls)
        with testing.running_sidecar(config) as reviews:
            yield app, reviews, f"127.0.0.1:{reviews.port('inbound')}"


def test_mtls_between_two_sidecars(pki: Pki) -> None:
    with mesh(pki, allow=[sid("productpage")]) as (app, _, inbound):
        files = pki.write(pki.issue("productpage"), "productpage")
        with testing.running_sidecar(outbound_config("productpage", inbound, files)) as productpage:
            response = httpx.get(productpage.url("outbound") + "/reviews/1", timeout=10)
        assert response.status_code == 200, response.text
        assert response.text == "reviews app"
        assert len(app.requests) == 1


def test_caller_not_in_allow_gets_403_naming_it(pki: Pki) -> None:
    with mesh(pki, allow=[sid("productpage")]) as (app, _, inbound):
        files = pki.write(pki.issue("ratings"), "ratings")
        with testing.running_sidecar(outbound_config("ratings", inbound, files)) as ratings:
            response = httpx.get(ratings.url("outbound") + "/", timeout=10)
        assert response.status_code == 403
        assert response.json()["identity"] == sid("ratings")
        assert app.requests == []


def test_upstream_with_unexpected_identity_fails_the_attempt(pki: Pki) -> None:
    with mesh(pki) as (app, _, inbound):
        files = pki.write(pki.issue("productpage"), "productpage")
        config = outbound_config("productpage", inbound, files, expect=sid("details"))
        with testing.running_sidecar(config) as productpage:
            response = httpx.get(productpage.url("outbound") + "/", timeout=10)
        assert response.status_code == 503
        assert "connection failure" in response.text  # flag UF
        assert app.requests == []


def test_plaintext_client_is_refused_in_strict_and_served_in_permissive(pki: Pki) -> None:
    with mesh(pki, mode="strict") as (app, _, inbound):
        host, port = inbound.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
        assert not data.startswith(b"HTTP/1.1 200")
        assert app.requests == []
    with mesh(pki, mode="permissive") as (app, _, inbound):
        response = httpx.get(f"http://{inbound}/", timeout=10)
        assert response.status_code == 200
        files = pki.write(pki.issue("productpage"), "productpage")
        with testing.running_sidecar(outbound_config("productpage", inbound, files)) as productpage:
            assert httpx.get(productpage.url("outbound") + "/", timeout=10).status_code == 200
