"""A listener's `allow` holds for every request on the listener: a route may narrow it,
never widen or drop it; `permissive` with `allow` set refuses plaintext peers (issue 13,
findings 2 and 3). The table walks every (listener mode x listener allow x route entry)
combination through the policies the core builds from a real config; the end-to-end
tests reproduce the findings with real TLS."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sidemesh_mtls_testkit import Pki, outbound_config, sid

from sidemesh import ConnectionInfo, Policy, Response, testing

MODES = ["strict", "permissive"]
LISTENER_ALLOWS: list[list[str] | None] = [None, [sid("productpage")]]
#: the route's own entry: none, the listener's inherited, a different allow (an attempt to
#: let ratings in), a wider allow, and the default allow (null: the whole trust domain).
ROUTE_ENTRIES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "inherit": {"name": "mtls"},
    "other": {"name": "mtls", "config": {"allow": [sid("ratings")]}},
    "wider": {"name": "mtls", "config": {"allow": [sid("productpage"), sid("ratings")]}},
    "domain": {"name": "mtls", "config": {"allow": None}},
}
PEERS = ["plaintext", "productpage", "ratings"]


def _der(pki: Pki, service: str) -> bytes:
    chain = pki.issue(service).chain_pem
    return x509.load_pem_x509_certificate(chain).public_bytes(Encoding.DER)


def _config(
    mode: str, allow: list[str] | None, route: dict[str, Any] | None, files: dict[str, str]
) -> dict[str, Any]:
    entry = dict(route) if route is not None else None
    if entry is not None and "config" in entry:
        entry["config"] = {**entry["config"], **files}
    return {
        "node": {"service": "reviews"},
        "clusters": [{"name": "reviews", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": "127.0.0.1:0",
                "plugins": [{"name": "mtls", "config": {"mode": mode, "allow": allow, **files}}],
                "routes": [
                    {
                        "name": "admin",
                        "match": {"prefix": "/admin"},
                        "cluster": "reviews",
                        "plugins": [entry] if entry is not None else [],
                    }
                ],
            }
        ],
    }


def _expected(mode: str, allow: list[str] | None, route: str, peer: str) -> bool:
    """Istio's semantics: the listener's rule, and the route's if it sets one."""
    inherited_allow = allow if route == "inherit" else None
    route_allow = {
        "other": [sid("ratings")],
        "wider": [sid("productpage"), sid("ratings")],
    }.get(route, inherited_allow)
    if peer == "plaintext":
        return mode == "permissive" and allow is None and route_allow is None
    identity = sid(peer)
    return (allow is None or identity in allow) and (route_allow is None or identity in route_allow)


def _answer(policies: list[Policy], peer: str, ders: dict[str, bytes]) -> Response | None:
    info = ConnectionInfo(
        "127.0.0.1:5000", tls=peer != "plaintext", peer_certificate=ders.get(peer)
    )
    request = testing.make_request(path="/admin", host="reviews", connection=info)
    for policy in policies:
        answer = policy.on_request(request)
        if answer is not None:
            return answer
    return None


@pytest.fixture(scope="module")
def table_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, str]]:
    pki = Pki.create(tmp_path_factory.mktemp("pki"))
    return pki, pki.write(pki.issue("reviews"), "reviews")


@pytest.mark.parametrize(
    ("mode", "allow", "route"),
    list(itertools.product(MODES, LISTENER_ALLOWS, ROUTE_ENTRIES)),
    ids=lambda v: "null" if v is None else v if isinstance(v, str) else "productpage",
)
def test_every_combination_keeps_the_listener_rule(
    table_pki: tuple[Pki, dict[str, str]], mode: str, allow: list[str] | None, route: str
) -> None:
    pki, files = table_pki
    ders = {peer: _der(pki, peer) for peer in PEERS if peer != "plaintext"}
    doc = _config(mode, allow, ROUTE_ENTRIES[route], files)
    assert testing.validate_config(doc) == []
    policies = testing.compile_config(doc).policies("inbound", "admin")
    for peer in PEERS:
        answer = _answer(policies, peer, ders)
        allowed = answer is None
        assert allowed == _expected(mode, allow, route, peer), (peer, answer and answer.body)
        if not allowed:
            assert answer is not None and answer.status == 403


def test_a_route_cannot_disable_the_listener_authorization(
    table_pki: tuple[Pki, dict[str, str]],
) -> None:
    _, files = table_pki
    doc = _config("strict", [sid("productpage")], {"name": "mtls", "enabled": False}, files)
    (error,) = testing.validate_config(doc)
    assert error.path == "listeners[0].routes[0].plugins[0].enabled"
    assert "cannot disable the listener's 'mtls'" in error.message


def _inbound(
    app: str, files: dict[str, str], mode: str, route_allow: list[str] | None
) -> dict[str, Any]:
    return {
        "node": {"service": "reviews"},
        "clusters": [{"name": "local", "endpoints": [{"address": app}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": "127.0.0.1:0",
                "plugins": [
                    {
                        "name": "mtls",
                        "config": {"mode": mode, "allow": [sid("productpage")], **files},
                    }
                ],
                "routes": [
                    {
                        "name": "admin",
                        "match": {"prefix": "/admin"},
                        "cluster": "local",
                        "plugins": [{"name": "mtls", "config": {"allow": route_allow, **files}}],
                    }
                    if route_allow is not None
                    else {"name": "admin", "match": {"prefix": "/admin"}, "cluster": "local"},
                    {"name": "rest", "match": {"prefix": "/"}, "cluster": "local"},
                ],
            }
        ],
    }


def test_ratings_is_refused_on_a_route_that_redeclares_mtls(pki: Pki) -> None:
    """Finding 2 end to end: before, the route's own `allow` let ratings through."""
    reviews_files = pki.write(pki.issue("reviews"), "reviews")
    ratings_files = pki.write(pki.issue("ratings"), "ratings")
    with testing.Upstream() as app:
        # The route's mtls originates TLS to the app too: the app is plain HTTP here, so
        # an accepted request would fail upstream (503) rather than be answered 403.
        inbound = _inbound(app.address, reviews_files, "strict", [sid("ratings")])
        with testing.running_sidecar(inbound) as reviews:
            target = f"127.0.0.1:{reviews.port('inbound')}"
            with testing.running_sidecar(
                outbound_config("ratings", target, ratings_files)
            ) as ratings:
                answer = httpx.get(ratings.url("outbound") + "/admin", timeout=10)
                assert answer.status_code == 403
                assert answer.json()["identity"] == sid("ratings")
                assert httpx.get(ratings.url("outbound") + "/x", timeout=10).status_code == 403
        assert app.requests == []


def test_permissive_with_allow_refuses_a_plaintext_client(pki: Pki) -> None:
    """Finding 3 end to end: a plaintext peer has no principal to match `allow`."""
    files = pki.write(pki.issue("reviews"), "reviews")
    with testing.Upstream() as app:
        with testing.running_sidecar(_inbound(app.address, files, "permissive", None)) as sc:
            port = sc.port("inbound")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /x HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
                sock.settimeout(5)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 403"), data[:200]
        assert b"plaintext client has no identity" in data
        assert app.requests == []
