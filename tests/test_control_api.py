"""The control API over real HTTP: auth, config versions, watch, validation, limits,
certificates, tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh.testing.control import ControlServer


def config(service: str = "web", upstream: str = "127.0.0.1:9", prefix: str = "/",
           **node: str) -> dict[str, Any]:
    return {
        "node": {"service": service, **node},
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": "127.0.0.1:0",
                       "routes": [{"name": "app", "match": {"prefix": prefix},
                                   "cluster": "app"}]}],
    }


@pytest.fixture()
def cp(tmp_path: Path) -> Iterator[ControlServer]:
    with ControlServer(tmp_path / "data") as server:
        yield server


def test_put_get_history_and_rollback(cp: ControlServer) -> None:
    base = f"{cp.url}/v1/services/web"
    first = httpx.put(base + "/config", json=config(prefix="/a"), headers=cp.admin, timeout=5)
    assert first.status_code == 200 and first.json()["version"] == 1
    again = httpx.put(base + "/config", json=config(prefix="/a"), headers=cp.admin, timeout=5)
    assert again.json() == {**first.json(), "unchanged": True}

    body = yaml.safe_dump(config(prefix="/b"))
    second = httpx.put(base + "/config", content=body, timeout=5,
                       headers={**cp.admin, "content-type": "application/yaml"})
    assert second.json()["version"] == 2

    current = httpx.get(base + "/config", headers=cp.admin, timeout=5).json()
    assert current["version"] == 2
    assert current["config"]["listeners"][0]["routes"][0]["match"] == {"prefix": "/b"}
    old = httpx.get(base + "/config", params={"version": 1}, headers=cp.admin, timeout=5)
    assert old.json()["config"]["listeners"][0]["routes"][0]["match"] == {"prefix": "/a"}

    back = httpx.post(base + "/rollback", json={"version": 1}, headers=cp.admin, timeout=5)
    assert back.json()["version"] == 3 and back.json()["rollback_of"] == 1
    history = httpx.get(base + "/history", headers=cp.admin, timeout=5).json()["versions"]
    assert [v["version"] for v in history] == [3, 2, 1]
    assert history[0]["rollback_of"] == 1 and history[0]["digest"] == history[2]["digest"]

    missing = httpx.post(base + "/rollback", json={"version": 9}, headers=cp.admin, timeout=5)
    assert missing.status_code == 404 and "no version 9" in missing.json()["error"]
    assert httpx.get(f"{cp.url}/v1/services/none/config", headers=cp.admin,
                     timeout=5).status_code == 404


def test_invalid_config_lists_every_error_and_stores_nothing(cp: ControlServer) -> None:
    bad = config()
    bad["clusters"][0]["connect_timeout"] = "soon"
    bad["listeners"][0]["routes"][0]["cluster"] = "nowhere"
    bad["listeners"][0]["plugins"] = [{"name": "no-such-plugin"}]
    answer = httpx.put(f"{cp.url}/v1/services/web/config", json=bad, headers=cp.admin,
                       timeout=5)
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    paths = {e["path"] for e in errors}
    assert {"clusters[0].connect_timeout", "listeners[0].routes[0].cluster",
            "listeners[0].plugins[0].name"} <= paths
    assert all(set(e) == {"path", "plugin", "plugin_version", "rule", "message"}
               for e in errors)
    assert httpx.get(f"{cp.url}/v1/services/web/history", headers=cp.admin,
                     timeout=5).json()["versions"] == []

    other = httpx.put(f"{cp.url}/v1/services/web/config", json=config("api"),
                      headers=cp.admin, timeout=5)
    assert other.status_code == 422 and other.json()["errors"][0]["path"] == "node.service"

    checked = httpx.post(f"{cp.url}/v1/validate", json=bad, headers=cp.admin, timeout=5)
    assert checked.status_code == 422 and checked.json()["errors"] == errors
    ok = httpx.post(f"{cp.url}/v1/validate", json=config(), headers=cp.admin, timeout=5)
    assert ok.json() == {"valid": True, "errors": []}


def test_auth_missing_wrong_and_scoped_tokens(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web/config"
    assert httpx.put(url, json=config(), headers=cp.admin, timeout=5).status_code == 200
    missing = httpx.get(url, timeout=5)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    for wrong in ("Bearer nope", "Bearer smt.abc.def", "Basic dGVzdA==",
                  f"Bearer {cp.admin_token}x"):
        assert httpx.get(url, headers={"authorization": wrong}, timeout=5).status_code == 401
    web = cp.headers("web")
    assert httpx.get(url, headers=web, timeout=5).status_code == 200
    forged = web["authorization"][:-2] + ("AA" if not web["authorization"].endswith("AA")
                                          else "BB")
    assert httpx.get(url, headers={"authorization": forged}, timeout=5).status_code == 401
    # a sidecar token reads its own service only, and never writes
    assert httpx.put(url, json=config(), headers=web, timeout=5).status_code == 403
    assert httpx.post(f"{cp.url}/v1/services/web/rollback", json={"version": 1},
                      headers=web, timeout=5).status_code == 403
    assert httpx.get(f"{cp.url}/v1/services/api/config", headers=web,
                     timeout=5).status_code == 403
    assert httpx.get(f"{cp.url}/v1/services/api/watch", headers=web,
                     timeout=5).status_code == 403
    assert httpx.get(f"{cp.url}/v1/proxies", headers=web, timeout=5).status_code == 403
    assert httpx.post(f"{cp.url}/v1/tokens", json={"service": "api"}, headers=web,
                      timeout=5).status_code == 403
    status = {"service": "api", "state": "ACK", "version": 1, "plugins": []}
    assert httpx.post(f"{cp.url}/v1/proxies/x/status", json=status, headers=web,
                      timeout=5).status_code == 403

    issued = httpx.post(f"{cp.url}/v1/tokens", json={"service": "api"}, headers=cp.admin,
                        timeout=5).json()
    assert issued["service"] == "api"
    api = {"authorization": f"Bearer {issued['token']}"}
    assert httpx.get(f"{cp.url}/v1/services/api/history", headers=api,
                     timeout=5).status_code == 200
    # only the hash is stored
    assert issued["token"].rsplit(".", 1)[1].encode() not in (
        cp.data_dir / "sidemesh.db").read_bytes()


def test_request_limits_and_unknown_fields(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web/config"
    huge = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    assert httpx.put(url, content=huge, headers=cp.admin, timeout=10).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 65536

    assert httpx.put(url, content=chunks(), headers=cp.admin, timeout=10).status_code == 413

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n" \
           "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    answer = httpx.put(url, content=bomb, timeout=5,
                       headers={**cp.admin, "content-type": "application/yaml"})
    assert answer.status_code == 422 and "anchors and aliases" in answer.json()["error"]
    assert httpx.put(url, content="{not json", headers=cp.admin, timeout=5).status_code == 422
    assert httpx.put(url, content="x", timeout=5,
                     headers={**cp.admin, "content-type": "text/plain"}).status_code == 415

    assert httpx.put(url, json=config(), headers=cp.admin, timeout=5).status_code == 200
    unknown = httpx.post(f"{cp.url}/v1/services/web/rollback", json={"version": 1, "to": 2},
                         headers=cp.admin, timeout=5)
    assert unknown.status_code == 422 and "'to'" in unknown.json()["error"]
    wrong_type = httpx.post(f"{cp.url}/v1/services/web/rollback", json={"version": "1"},
                            headers=cp.admin, timeout=5)
    assert wrong_type.status_code == 422
    status = {"service": "web", "state": "MAYBE", "version": 1, "plugins": [], "extra": 1}
    assert httpx.post(f"{cp.url}/v1/proxies/p1/status", json=status, headers=cp.admin,
                      timeout=5).status_code == 422
    assert httpx.get(f"{cp.url}/v1/services/bad%20name/config", headers=cp.admin,
                     timeout=5).status_code == 422
    nowhere = httpx.get(f"{cp.url}/v1/nothing", timeout=5)
    assert nowhere.status_code == 404 and "error" in nowhere.json()


def test_watch_answers_on_a_new_version_or_304_after_the_timeout(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web/watch"
    web = cp.headers("web")
    assert httpx.get(url, params={"after": 0, "timeout": 0.2}, headers=web,
                     timeout=5).status_code == 304
    results: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: results.append(httpx.get(
        url, params={"after": 0, "timeout": 20, "proxy": "web-1"}, headers=web, timeout=30)))
    waiter.start()
    time.sleep(0.3)
    assert httpx.put(f"{cp.url}/v1/services/web/config", json=config(), headers=cp.admin,
                     timeout=5).status_code == 200
    waiter.join(15)
    assert not waiter.is_alive(), "the long poll did not return on a new version"
    assert results[0].status_code == 200 and results[0].json()["version"] == 1
    # the proxy that polled is listed with its last-seen time
    seen = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    assert [p["id"] for p in seen] == ["web-1"] and seen[0]["state"] is None
    # already at the head: nothing until the timeout
    assert httpx.get(url, params={"after": 1, "timeout": 0.2}, headers=web,
                     timeout=5).status_code == 304
    # a proxy ahead of the store (the store was reset) gets the head at once
    assert httpx.get(url, params={"after": 7}, headers=web, timeout=5).json()["version"] == 1
    assert httpx.get(url, params={"timeout": "soon"}, headers=web, timeout=5).status_code == 422


def test_status_reports_are_listed(cp: ControlServer) -> None:
    web = cp.headers("web")
    plugins = [{"name": "retry", "version": "0.1.0", "distribution": "sidemesh-retry"}]
    ack = {"service": "web", "state": "ACK", "version": 2, "plugins": plugins}
    assert httpx.post(f"{cp.url}/v1/proxies/web-1/status", json=ack, headers=web,
                      timeout=5).json() == {"id": "web-1", "recorded": True}
    nack = {"service": "web", "state": "NACK", "version": 3, "applied_version": 2,
            "error": "plugin retry 0.1.0 does not satisfy >=2", "plugins": plugins}
    httpx.post(f"{cp.url}/v1/proxies/web-1/status", json=nack, headers=web, timeout=5)
    [proxy] = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    assert proxy["state"] == "NACK" and proxy["version"] == 3
    assert proxy["applied_version"] == 2 and "does not satisfy" in proxy["error"]
    assert proxy["plugins"] == plugins and proxy["last_seen"] > 0


def _csr(san: str | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _uri(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def test_certificates_are_issued_for_the_token_service(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/certificates"
    web = cp.headers("web")
    answer = httpx.post(url, json={"csr": _csr()}, headers=web, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert _uri(body["certificate"]) == ["spiffe://cluster.local/ns/default/sa/web"]
    bundle = httpx.get(f"{cp.url}/v1/trust-bundle", timeout=5).json()
    assert bundle == {"trust_domain": "cluster.local", "trust_bundle": body["trust_bundle"]}

    # the identity comes from the token, never from the CSR
    spoof = httpx.post(url, json={"csr": _csr("spiffe://cluster.local/ns/default/sa/api")},
                       headers=web, timeout=10)
    assert spoof.status_code == 422 and "spiffe://cluster.local/ns/default/sa/web" in \
        spoof.json()["error"]
    assert httpx.post(url, json={"csr": "nonsense"}, headers=web, timeout=5).status_code == 422
    assert httpx.post(url, json={"csr": _csr()}, headers=cp.admin, timeout=5).status_code == 403
    assert httpx.post(url, json={"csr": _csr()}, timeout=5).status_code == 401

    # the service's stored node section decides trust domain and namespace
    httpx.put(f"{cp.url}/v1/services/shop/config", headers=cp.admin, timeout=5,
              json=config("shop", namespace="prod", trust_domain="example.org"))
    shop = httpx.post(url, json={"csr": _csr()}, headers=cp.headers("shop"), timeout=10).json()
    assert _uri(shop["certificate"]) == ["spiffe://example.org/ns/prod/sa/shop"]
    pem = httpx.get(f"{cp.url}/v1/trust-bundle", params={"trust_domain": "example.org"},
                    headers={"accept": "application/x-pem-file"}, timeout=5)
    assert pem.text == shop["trust_bundle"] != body["trust_bundle"]


def test_schemas(cp: ControlServer) -> None:
    composed = httpx.get(f"{cp.url}/v1/schemas", headers=cp.admin, timeout=5).json()
    assert composed["$schema"].startswith("https://json-schema.org/draft/2020-12")
    registry = cp.state.registry if cp.state else None
    assert registry is not None
    for policy in registry.all():
        one = httpx.get(f"{cp.url}/v1/schemas/{policy.name}", headers=cp.admin,
                        timeout=5).json()
        assert one["version"] == policy.version and one["schema"] == policy.schema
        assert one["distribution"] == policy.distribution
    unknown = httpx.get(f"{cp.url}/v1/schemas/nope", headers=cp.admin, timeout=5)
    assert unknown.status_code == 404 and "unknown plugin 'nope'" in unknown.json()["error"]
