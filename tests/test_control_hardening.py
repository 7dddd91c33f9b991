"""The control API tried as an attacker would (issue 15): real HTTP requests against a
real control plane with its real SQLite file."""

from __future__ import annotations

import time
from asyncio import run
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidemesh import SpiffeIdError, parse_spiffe_id, validate_trust_domain
from sidemesh.control.sqlite import DB_FILE, SQLiteStore
from sidemesh.control.store import ProxyStatus
from sidemesh.testing.control import ControlServer


def config(service: str = "web", routes: int = 1, **node: str) -> dict[str, Any]:
    return {
        "node": {"service": service, **node},
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "inbound", "address": "127.0.0.1:0",
                       "routes": [{"name": f"r{i}", "match": {"prefix": f"/p{i}"},
                                   "cluster": "app"} for i in range(routes)]}],
    }


@pytest.fixture()
def cp(tmp_path: Path) -> Iterator[ControlServer]:
    with ControlServer(tmp_path / "data") as server:
        yield server


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# 1. trust bundles ---------------------------------------------------------------------
def test_trust_bundle_only_for_configured_trust_domains(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/trust-bundle"
    before = _files(cp.data_dir)
    unknown = httpx.get(url, params={"trust_domain": "attacker.example"}, timeout=5)
    assert unknown.status_code == 404
    assert "attacker.example" in unknown.json()["error"]
    assert "not a trust domain of this control plane" in unknown.json()["error"]
    for name in (".", ".."):
        refused = httpx.get(url, params={"trust_domain": name}, timeout=5)
        assert refused.status_code == 422 and "relative path" in refused.json()["error"]
    # nothing was created: no directory, no key, no CA kept in memory
    assert _files(cp.data_dir) == before
    assert isinstance(cp.store, SQLiteStore) and cp.store._authorities == {}

    # the default trust domain, and those named by stored configs, are served
    assert httpx.get(url, timeout=5).json()["trust_domain"] == "cluster.local"
    assert httpx.get(url, params={"trust_domain": "example.org"}, timeout=5).status_code == 404
    assert httpx.put(f"{cp.url}/v1/services/shop/config", headers=cp.admin, timeout=5,
                     json=config("shop", trust_domain="example.org")).status_code == 200
    served = httpx.get(url, params={"trust_domain": "example.org"}, timeout=5)
    assert served.status_code == 200 and served.json()["trust_domain"] == "example.org"
    assert sorted(cp.store._authorities) == ["cluster.local", "example.org"]


def test_dot_names_are_not_trust_domains() -> None:
    for name in (".", ".."):
        with pytest.raises(SpiffeIdError, match="relative path"):
            validate_trust_domain(name)
        with pytest.raises(SpiffeIdError):
            parse_spiffe_id(f"spiffe://{name}/ns/default/sa/web")
    assert validate_trust_domain("a.b_c-d") == "a.b_c-d"


# 2. proxy ids bound to their service ----------------------------------------------------
def _status(service: str, state: str = "ACK", version: int = 1) -> dict[str, Any]:
    return {"service": service, "state": state, "version": version, "plugins": []}


def test_a_proxy_id_belongs_to_the_service_that_claimed_it(cp: ControlServer) -> None:
    alpha, beta = cp.headers("alpha"), cp.headers("beta")
    report = f"{cp.url}/v1/proxies/beta-pod-1/status"
    assert httpx.post(report, json=_status("beta", "NACK"), headers=beta,
                      timeout=5).status_code == 200
    [before] = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]

    # alpha's token cannot overwrite beta's proxy: not as alpha, not as beta, nor by
    # watching under its id; the admin cannot move it to another service either
    spoof = httpx.post(report, json=_status("alpha"), headers=alpha, timeout=5)
    assert spoof.status_code == 403
    assert spoof.json()["error"] == "proxy id 'beta-pod-1' belongs to service 'beta'"
    assert httpx.post(report, json=_status("beta"), headers=alpha, timeout=5).status_code == 403
    assert httpx.post(report, json=_status("alpha"), headers=cp.admin,
                      timeout=5).status_code == 403
    watch = httpx.get(f"{cp.url}/v1/services/alpha/watch", headers=alpha, timeout=5,
                      params={"proxy": "beta-pod-1", "timeout": 0})
    assert watch.status_code == 403 and "belongs to service 'beta'" in watch.json()["error"]
    [after] = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    assert after == before and after["state"] == "NACK" and after["service"] == "beta"

    # its own ids work as before
    assert httpx.post(f"{cp.url}/v1/proxies/alpha-pod-1/status", json=_status("alpha"),
                      headers=alpha, timeout=5).status_code == 200
    assert httpx.post(report, json=_status("beta", "ACK", 2), headers=beta,
                      timeout=5).status_code == 200


# 3. watch?proxy= validated and bounded ------------------------------------------------
def test_watch_proxy_ids_are_validated(cp: ControlServer) -> None:
    url = f"{cp.url}/v1/services/web/watch"
    web = cp.headers("web")
    for bad in ("", "../etc", "-x", "a" * 129, "a b", "é", "x\x00", "web-1\n"):
        answer = httpx.get(url, params={"proxy": bad, "timeout": 0}, headers=web, timeout=5)
        assert answer.status_code == 422, bad
        assert "is not a proxy id" in answer.json()["error"]
    assert httpx.post(f"{cp.url}/v1/proxies/web-1%0A/status", json=_status("web"),
                      headers=web, timeout=5).status_code == 422
    assert httpx.get(url, params={"proxy": "a" * 128, "timeout": 0}, headers=web,
                     timeout=5).status_code == 304
    listed = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    assert [p["id"] for p in listed] == ["a" * 128]


def test_a_service_registers_a_bounded_number_of_proxies(cp: ControlServer) -> None:
    assert cp.state is not None
    cp.state.max_proxies_per_service = 3
    url = f"{cp.url}/v1/services/web/watch"
    web = cp.headers("web")
    for n in range(3):
        assert httpx.get(url, params={"proxy": f"web-{n}", "timeout": 0}, headers=web,
                         timeout=5).status_code == 304
    full = httpx.get(url, params={"proxy": "web-3", "timeout": 0}, headers=web, timeout=5)
    assert full.status_code == 429
    assert full.json()["error"].startswith("service 'web' already has 3 proxies")
    report = httpx.post(f"{cp.url}/v1/proxies/web-4/status", json=_status("web"),
                        headers=web, timeout=5)
    assert report.status_code == 429
    # known ids keep working; other services have their own budget
    assert httpx.get(url, params={"proxy": "web-0", "timeout": 0}, headers=web,
                     timeout=5).status_code == 304
    assert httpx.post(f"{cp.url}/v1/proxies/api-0/status", json=_status("api"),
                      headers=cp.headers("api"), timeout=5).status_code == 200
    listed = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    assert [p["id"] for p in listed] == ["api-0", "web-0", "web-1", "web-2"]


def test_at_the_limit_proxies_not_seen_for_an_hour_make_room(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / DB_FILE)
    old = time.time() - 3601
    run(store.record_status(ProxyStatus("web-old", "web", "ACK", 1, 1, None, [], old), limit=2))
    run(store.touch_proxy("web-live", "web", limit=2))
    run(store.touch_proxy("web-new", "web", limit=2))
    assert [p.id for p in run(store.proxies())] == ["web-live", "web-new"]
    run(store.close())


# 4. nesting limit over the API --------------------------------------------------------
def test_deeply_nested_configs_are_a_clear_422(cp: ControlServer) -> None:
    yaml_body = {**cp.admin, "content-type": "application/yaml"}
    for url in (f"{cp.url}/v1/services/web/config", f"{cp.url}/v1/validate"):
        method = httpx.put if url.endswith("config") else httpx.post
        deep = method(url, content="node: " + "[" * 20000, headers=yaml_body, timeout=10)
        assert deep.status_code == 422, deep.text
        [error] = deep.json()["errors"]
        assert error["rule"] == "nesting" and "nested deeper than 64 levels" in error["message"]
        # JSON as deep as the JSON parser allows must not reach validation either
        doc = '{"node": {"service": "web", "x": ' + "[" * 900 + "]" * 900 + "}}"
        deep_json = method(url, content=doc, headers=cp.admin, timeout=10)
        assert deep_json.status_code == 422, deep_json.text
        assert deep_json.json()["errors"][0]["rule"] == "nesting"
    # 64 levels are fine (and configs need far fewer)
    ok = config()
    ok["node"]["x"] = yaml.safe_load("[" * 62 + "]" * 62)
    answer = httpx.post(f"{cp.url}/v1/validate", json=ok, headers=cp.admin, timeout=5)
    assert answer.status_code == 422
    assert all(e["rule"] != "nesting" for e in answer.json()["errors"])


# 5. disk full -------------------------------------------------------------------------
def test_a_full_disk_is_reported_as_such(cp: ControlServer) -> None:
    assert isinstance(cp.store, SQLiteStore)
    url = f"{cp.url}/v1/services/web/config"
    assert httpx.put(url, json=config(), headers=cp.admin, timeout=5).json()["version"] == 1
    # The server's own connection may not grow the real file any more: SQLITE_FULL on the
    # next write, as on a full disk.
    db = cp.store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    full = httpx.put(url, json=config(routes=300), headers=cp.admin, timeout=5)
    assert full.status_code == 507, full.text
    assert full.json() == {"error": "the store cannot write: database or disk is full"}
    # nothing half-written; writes work again once there is room
    history = httpx.get(f"{cp.url}/v1/services/web/history", headers=cp.admin, timeout=5)
    assert [v["version"] for v in history.json()["versions"]] == [1]
    db.execute("PRAGMA max_page_count = 1073741823")
    again = httpx.put(url, json=config(routes=300), headers=cp.admin, timeout=5)
    assert again.status_code == 200 and again.json()["version"] == 2


# 7. the OpenAPI document needs a token ------------------------------------------------
def test_openapi_document_needs_a_token(cp: ControlServer) -> None:
    url = f"{cp.url}/openapi.json"
    missing = httpx.get(url, timeout=5)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=5).status_code == 401
    for headers in (cp.admin, cp.headers("web")):
        answer = httpx.get(url, headers=headers, timeout=5)
        assert answer.status_code == 200 and answer.json()["openapi"].startswith("3.1")
