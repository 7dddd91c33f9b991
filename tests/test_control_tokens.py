"""Sidecar tokens expire (``--ttl``) and can be revoked (``DELETE /v1/tokens/{id}``,
``sidemesh token --revoke``); an expired or revoked token is refused with a clear 401,
an open long poll included; store files from before expiry keep working."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from asyncio import run
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from sidemesh.control.auth import TokenRefused, authenticate, issue_token, token_id
from sidemesh.control.sqlite import DB_FILE, SQLiteStore
from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for
from sidemesh.testing.control import ControlServer


def config(upstream: str = "127.0.0.1:9", listen: str = "127.0.0.1:0",
           admin: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node": {"service": "web"},
        "clusters": [{"name": "app", "connect_timeout": "1s",
                      "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": listen,
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }
    if admin is not None:
        doc["admin"] = admin
    return doc


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sidemesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidemesh", *args], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture()
def cp(tmp_path: Path) -> Iterator[ControlServer]:
    with ControlServer(tmp_path / "data") as server:
        assert httpx.put(f"{server.url}/v1/services/web/config", json=config(),
                         headers=server.admin, timeout=5).status_code == 200
        yield server


def documented(spec: dict[str, Any], template: str, response: httpx.Response) -> None:
    """``response`` has the status and body the OpenAPI document gives ``template``."""
    operation = spec["paths"][template][response.request.method.lower()]
    schema = operation["responses"][str(response.status_code)]["content"][
        "application/json"]["schema"]
    errors = list(Draft202012Validator({**schema, "components": spec["components"]})
                  .iter_errors(response.json()))
    assert not errors, errors[0]


# expiry ------------------------------------------------------------------------------
def test_a_token_expires_after_its_ttl(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / DB_FILE)
    forever, day = run(issue_token(store, "web")), run(issue_token(store, "web", ttl=86400))
    issued = run(store.get_token(token_id(day)))
    assert issued is not None and issued.expires_at is not None
    assert issued.expires_at == pytest.approx(issued.created_at + 86400)
    later = issued.created_at + 86399
    assert run(authenticate(f"Bearer {day}", "admin", store, now=later)) is not None
    with pytest.raises(TokenRefused, match=r"token [0-9a-f]{16} of service 'web' expired at"):
        run(authenticate(f"Bearer {day}", "admin", store, now=issued.created_at + 86401))
    # without a ttl: no expiry (as before)
    principal = run(authenticate(f"Bearer {forever}", "admin", store, now=later + 1e9))
    assert principal is not None and principal.service == "web"
    run(store.close())


def test_an_expired_token_gets_a_clear_401(cp: ControlServer) -> None:
    issued = httpx.post(f"{cp.url}/v1/tokens", json={"service": "web", "ttl": 2},
                        headers=cp.admin, timeout=5).json()
    assert issued["expires_at"] == pytest.approx(issued["created_at"] + 2)
    url = f"{cp.url}/v1/services/web/config"
    assert httpx.get(url, headers=bearer(issued["token"]), timeout=5).status_code == 200
    time.sleep(max(0.0, issued["expires_at"] - time.time()) + 0.1)
    answer = httpx.get(url, headers=bearer(issued["token"]), timeout=5)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert f"token {issued['id']} of service 'web' expired at" in answer.json()["error"]
    for ttl in (0, -5, "1h"):
        refused = httpx.post(f"{cp.url}/v1/tokens", json={"service": "web", "ttl": ttl},
                             headers=cp.admin, timeout=5)
        assert refused.status_code == 422, ttl


# revocation and listing ----------------------------------------------------------------
def test_revoke_list_and_refuse(cp: ControlServer) -> None:
    spec = httpx.get(f"{cp.url}/openapi.json", headers=cp.admin, timeout=5).json()
    web = httpx.post(f"{cp.url}/v1/tokens", json={"service": "web"}, headers=cp.admin,
                     timeout=5)
    documented(spec, "/v1/tokens", web)
    api = httpx.post(f"{cp.url}/v1/tokens", json={"service": "api", "ttl": 3600},
                     headers=cp.admin, timeout=5).json()
    token, tid = web.json()["token"], web.json()["id"]
    assert tid == token_id(token)
    url = f"{cp.url}/v1/services/web/config"
    assert httpx.get(url, headers=bearer(token), timeout=5).status_code == 200

    # only the admin lists and revokes
    for call in (httpx.get(f"{cp.url}/v1/tokens", headers=bearer(token), timeout=5),
                 httpx.delete(f"{cp.url}/v1/tokens/{tid}", headers=bearer(token), timeout=5)):
        assert call.status_code == 403
    assert httpx.delete(f"{cp.url}/v1/tokens/{tid}", timeout=5).status_code == 401

    listed = httpx.get(f"{cp.url}/v1/tokens", headers=cp.admin, timeout=5)
    documented(spec, "/v1/tokens", listed)
    rows = {t["id"]: t for t in listed.json()["tokens"]}
    assert rows[tid] == {"id": tid, "service": "web", "created_at": rows[tid]["created_at"],
                         "expires_at": None, "revoked_at": None, "state": "active"}
    assert rows[api["id"]]["expires_at"] == api["expires_at"]
    assert token.rsplit(".", 1)[1] not in listed.text  # never the secret
    only_api = httpx.get(f"{cp.url}/v1/tokens", params={"service": "api"}, headers=cp.admin,
                         timeout=5).json()["tokens"]
    assert [t["id"] for t in only_api] == [api["id"]]

    revoked = httpx.delete(f"{cp.url}/v1/tokens/{tid}", headers=cp.admin, timeout=5)
    documented(spec, "/v1/tokens/{id}", revoked)
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"] is not None
    refused = httpx.get(url, headers=bearer(token), timeout=5)
    assert refused.status_code == 401
    assert f"token {tid} of service 'web' was revoked at" in refused.json()["error"]
    # a second revocation changes nothing; unknown and malformed ids
    again = httpx.delete(f"{cp.url}/v1/tokens/{tid}", headers=cp.admin, timeout=5)
    assert again.json() == revoked.json()
    missing = httpx.delete(f"{cp.url}/v1/tokens/{'0' * 16}", headers=cp.admin, timeout=5)
    documented(spec, "/v1/tokens/{id}", missing)
    assert missing.status_code == 404
    bad = httpx.delete(f"{cp.url}/v1/tokens/nope", headers=cp.admin, timeout=5)
    documented(spec, "/v1/tokens/{id}", bad)
    assert bad.status_code == 422
    states = {t["id"]: t["state"] for t in httpx.get(
        f"{cp.url}/v1/tokens", headers=cp.admin, timeout=5).json()["tokens"]}
    assert states == {tid: "revoked", api["id"]: "active"}


# long polls -------------------------------------------------------------------------------
def _watch(cp: ControlServer, token: str, timeout: float) -> httpx.Response:
    return httpx.get(f"{cp.url}/v1/services/web/watch", params={"after": 1, "timeout": timeout},
                     headers=bearer(token), timeout=timeout + 10)


def test_an_open_long_poll_is_refused_as_soon_as_its_token_is_revoked(
    cp: ControlServer,
) -> None:
    token = cp.token("web")
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(_watch, cp, token, 20)
        time.sleep(0.5)  # the poll is waiting on the server by now
        assert httpx.delete(f"{cp.url}/v1/tokens/{token_id(token)}", headers=cp.admin,
                            timeout=5).status_code == 200
        answer = poll.result(timeout=30)
    assert answer.status_code == 401, answer.text
    assert "was revoked at" in answer.json()["error"]
    assert time.monotonic() - started < 5  # woken, not at its 20 s timeout


def test_a_poll_revoked_behind_the_servers_back_is_never_handed_a_new_config(
    cp: ControlServer,
) -> None:
    """``sidemesh token --revoke --data DIR`` writes the store directly: the poll is not
    woken by it, but when a new version wakes it, the token is checked again."""
    token = cp.token("web")
    assert cp.state is not None
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(_watch, cp, token, 20)
        time.sleep(0.5)
        other = SQLiteStore(cp.data_dir / DB_FILE)  # as `sidemesh token --revoke` does
        assert run(other.revoke_token(token_id(token), time.time())) is not None
        run(other.close())
        assert httpx.put(f"{cp.url}/v1/services/web/config", json=config("127.0.0.1:8"),
                         headers=cp.admin, timeout=5).json()["version"] == 2
        answer = poll.result(timeout=30)
    assert answer.status_code == 401, answer.text
    assert "127.0.0.1:8" not in answer.text


def test_a_token_expiring_during_a_poll_is_refused_when_the_poll_ends(
    cp: ControlServer,
) -> None:
    token = httpx.post(f"{cp.url}/v1/tokens", json={"service": "web", "ttl": 0.5},
                       headers=cp.admin, timeout=5).json()["token"]
    answer = _watch(cp, token, 1.5)
    assert answer.status_code == 401 and "expired at" in answer.json()["error"]


# a real sidecar ---------------------------------------------------------------------------
def test_a_real_sidecar_is_cut_off_by_a_revocation_and_keeps_its_config(
    tmp_path: Path,
) -> None:
    data, url = tmp_path / "data", f"http://127.0.0.1:{free_port()}"
    listen, admin_port = free_port(), free_port()
    with (Upstream(lambda _: Reply(body=b"v1")) as one,
          Upstream(lambda _: Reply(body=b"v2")) as two,
          ProxyProcess("control", "--data", str(data), "--listen",
                       url.removeprefix("http://")) as control):
        control.wait_http(url + "/v1/tokens", status=401)
        admin = bearer((data / "admin.token").read_text().strip())
        doc = config(one.address, f"127.0.0.1:{listen}", f"127.0.0.1:{admin_port}")
        assert httpx.put(f"{url}/v1/services/web/config", json=doc, headers=admin,
                         timeout=5).status_code == 200

        issued = sidemesh("token", "--data", str(data), "--service", "web", "--ttl", "24h")
        assert issued.returncode == 0, issued.stderr
        tid = token_id(issued.stdout)
        assert f"{tid} for service web, expires " in issued.stderr
        assert f"sidemesh token --revoke {tid}" in issued.stderr
        (tmp_path / "web.token").write_text(issued.stdout)

        with ProxyProcess("proxy", "--control", url, "--service", "web", "--token-file",
                          str(tmp_path / "web.token"), "--state-dir", str(tmp_path / "state"),
                          "--access-log", "off", "--drain-timeout", "1s") as proxy:
            proxy.wait_http(f"http://127.0.0.1:{admin_port}/ready")
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "v1"
            time.sleep(0.5)  # its next long poll is open
            revoked = sidemesh("token", "--control", url, "--data", str(data), "--revoke",
                               tid)
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked token {tid} of service web" in revoked.stdout
            assert wait_for(lambda: "answered 401" in proxy.output, timeout=5), proxy.output
            assert f"token {tid} of service 'web' was revoked at" in proxy.output

            doc["clusters"][0]["endpoints"][0]["address"] = two.address
            assert httpx.put(f"{url}/v1/services/web/config", json=doc, headers=admin,
                             timeout=5).json()["version"] == 2
            time.sleep(1.0)
            # still serving the config it had: never handed version 2
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "v1"
            dump = httpx.get(f"http://127.0.0.1:{admin_port}/config_dump", timeout=5).json()
            assert dump["version"] == "1"

        listed = sidemesh("token", "--data", str(data), "--list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)["tokens"]
        assert (row["id"], row["state"]) == (tid, "revoked")
        assert row["expires_at"] == pytest.approx(row["created_at"] + 86400)


# the command ----------------------------------------------------------------------------
def test_the_token_command_issues_lists_and_revokes_in_a_data_dir(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    out = sidemesh("token", "--data", data, "--service", "web", "--json")
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["expires_at"] is None and issued["id"] == token_id(issued["token"])
    table = sidemesh("token", "--data", data, "--list")
    assert table.returncode == 0 and issued["id"] in table.stdout and "active" in table.stdout
    assert issued["token"].rsplit(".", 1)[1] not in table.stdout
    assert sidemesh("token", "--data", data, "--revoke", issued["id"]).returncode == 0
    assert "revoked" in sidemesh("token", "--data", data, "--list").stdout
    for args, text in (
        (["--revoke", "0" * 16], "no token 0000000000000000"),
        (["--revoke", "x"], "is not a token id"),
        (["--service", "web", "--ttl", "0s"], "positive duration"),
        (["--service", "web", "--ttl", "soon"], "is not a duration"),
        (["--list", "--ttl", "1h"], "--ttl is for a new token"),
        (["--revoke", issued["id"], "--service", "web"], "--revoke takes the token id"),
        (["--revoke", issued["id"], "--list"], "not allowed with"),
        ([], "give --service NAME"),
    ):
        failed = sidemesh("token", "--data", data, *args)
        assert failed.returncode == 2 and text in failed.stderr, (args, failed.stderr)


# an existing store file ---------------------------------------------------------------------
_OLD_SCHEMA = """
CREATE TABLE configs (service TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    digest TEXT NOT NULL, created_at REAL NOT NULL, author TEXT NOT NULL,
    rollback_of INTEGER, PRIMARY KEY (service, version));
CREATE TABLE heads (service TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL,
    service TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE proxies (id TEXT PRIMARY KEY, service TEXT NOT NULL, state TEXT,
    version INTEGER, applied INTEGER, error TEXT, plugins TEXT NOT NULL,
    last_seen REAL NOT NULL);
"""


def test_a_store_file_from_the_previous_version_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (
        "0123456789abcdef", hashlib.sha256(b"old-secret").hexdigest(), "web", 1.0e9))
    old.commit()
    old.close()
    token = "smt.0123456789abcdef.old-secret"

    store = SQLiteStore(path)
    principal = run(authenticate(f"Bearer {token}", "admin", store))
    assert principal is not None and principal.service == "web"
    [record] = run(store.tokens())
    assert (record.id, record.expires_at, record.revoked_at) == ("0123456789abcdef", None,
                                                                 None)
    fresh = run(issue_token(store, "api", ttl=60))
    assert run(authenticate(f"Bearer {fresh}", "admin", store)) is not None
    assert run(store.revoke_token("0123456789abcdef", time.time())) is not None
    run(store.close())

    # the migration happened once, and the revocation is on disk
    reopened = SQLiteStore(path)
    with pytest.raises(TokenRefused, match="was revoked"):
        run(authenticate(f"Bearer {token}", "admin", reopened))
    run(reopened.close())
    listed = sidemesh("token", "--data", str(tmp_path), "--list", "--json")
    assert [t["state"] for t in json.loads(listed.stdout)["tokens"]] == ["revoked", "active"]
