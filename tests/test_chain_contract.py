"""The plugin contract from the outside: policies defined here run in real chains."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from sidemesh import ConnectionSetup, Policy, StashKey, hookimpl
from sidemesh.datapath.cluster import Endpoint
from sidemesh.datapath.messages import Attempt, Request, Response
from sidemesh.testing import Reply, Upstream, running_sidecar, simple_config, wait_for

CALLS: list[str] = []

OPEN = {"type": "object", "additionalProperties": True}


class Deny(Policy):
    name = "deny"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"path": {"type": "string", "default": "/admin"}},
        "additionalProperties": False,
    }

    def on_request(self, request: Request) -> Response | None:
        CALLS.append(f"deny:{self.config['path']}")
        if request.path.startswith(self.config["path"]):
            return Response.json(403, {"denied": request.path})
        return None


TAG = StashKey[str]("tag")


class Tag(Policy):
    """Async request hook that adds a header; records the order of every hook."""

    name = "tag"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"value": {"type": "string", "default": "x"}},
        "additionalProperties": False,
    }

    async def on_request(self, request: Request) -> Response | None:
        await asyncio.sleep(0)
        CALLS.append(f"tag-request:{self.config['value']}")
        request.headers.add("x-tag", self.config["value"])
        request.stash[TAG] = self.config["value"]
        return None

    def on_response(self, request: Request, attempt: Attempt) -> None:
        CALLS.append(f"tag-response:{request.stash[TAG]}")
        assert attempt.response is not None
        attempt.response.headers.set("x-tagged", request.stash[TAG])


class Again(Policy):
    """Asks for one more attempt on a 503, avoiding the endpoint already tried."""

    name = "again"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"buffer": {"type": "integer", "default": 1048576}},
        "additionalProperties": False,
    }

    def on_request(self, request: Request) -> Response | None:
        request.retry_buffer_limit = self.config["buffer"]
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        rest = [e for e in endpoints if e not in request.tried]
        return rest or endpoints

    async def on_response(self, request: Request, attempt: Attempt) -> None:
        if attempt.status == 503 and attempt.number < 3:
            attempt.retry(0.01)


class Broken(Policy):
    name = "broken"
    schema: ClassVar[dict[str, Any]] = OPEN

    def on_request(self, request: Request) -> Response | None:
        raise RuntimeError("policy bug")


class Smuggle(Policy):
    """A buggy policy trying to write a header that would split the request."""

    name = "smuggle"
    schema: ClassVar[dict[str, Any]] = OPEN

    def on_request(self, request: Request) -> Response | None:
        request.headers.set("x-a", "1\r\nTransfer-Encoding: chunked")
        return None


class Pinned(Policy):
    """Insists on a server certificate: a plain upstream must fail the attempt (UF)."""

    name = "pinned"
    schema: ClassVar[dict[str, Any]] = OPEN

    def connection_setup(self, setup: ConnectionSetup) -> None:
        if setup.kind == "upstream":
            CALLS.append(f"setup:{setup.endpoint.address if setup.endpoint else None}")
            setup.verify_peer = lambda der: None


class Shadow(Policy):
    name = "shadow"
    schema: ClassVar[dict[str, Any]] = OPEN

    def on_request(self, request: Request) -> Response | None:
        request.mirror("mirror")
        return None


DURATIONS: list[float] = []


class Timing(Policy):
    name = "timing"
    schema: ClassVar[dict[str, Any]] = OPEN

    def on_response(self, request: Request, attempt: Attempt) -> None:
        DURATIONS.append(attempt.duration)


APPLIED: list[str] = []


class TestPlugin:
    @hookimpl
    def sidemesh_policies(self) -> list[type[Policy]]:
        return [Deny, Tag, Again, Broken, Pinned, Shadow, Smuggle, Timing]

    @hookimpl
    def sidemesh_config_applied(self, version: str, source: str, config: dict[str, Any]) -> None:
        APPLIED.append(f"{version}:{len(config['listeners'])}")


PLUGINS = [TestPlugin()]


def test_a_policy_can_answer_directly_and_nothing_reaches_the_upstream() -> None:
    with (
        Upstream() as up,
        running_sidecar(simple_config(up.address, plugins=[{"name": "deny"}]), PLUGINS) as sc,
    ):
        denied = httpx.get(sc.url("main") + "/admin/x", timeout=5)
        assert denied.status_code == 403
        assert denied.json() == {"denied": "/admin/x"}
        assert httpx.get(sc.url("main") + "/ok", timeout=5).status_code == 200
        assert [r.path for r in up.requests] == ["/ok"]


def test_chain_order_listener_first_and_route_entry_overrides_by_name() -> None:
    CALLS.clear()
    doc = simple_config(
        "127.0.0.1:9",
        listener_plugins=[{"name": "tag", "config": {"value": "listener"}}, {"name": "deny"}],
        plugins=[{"name": "deny", "config": {"path": "/secret"}}],
    )
    with Upstream() as up:
        doc["clusters"][0]["endpoints"] = [{"address": up.address}]
        with running_sidecar(doc, PLUGINS) as sc:
            response = httpx.get(sc.url("main") + "/admin", timeout=5)
            assert response.status_code == 200  # the route's deny config replaced /admin
            assert response.headers["x-tagged"] == "listener"
            assert up.requests[0].headers["x-tag"] == "listener"
            assert httpx.get(sc.url("main") + "/secret", timeout=5).status_code == 403
    assert CALLS[:3] == ["tag-request:listener", "deny:/secret", "tag-response:listener"]


def test_response_hook_can_ask_for_another_attempt_on_another_endpoint() -> None:
    with (
        Upstream(lambda r: Reply(status=503)) as bad,
        Upstream(lambda r: Reply(body=b"good")) as good,
    ):
        doc = simple_config(bad.address, good.address, plugins=[{"name": "again"}])
        with running_sidecar(doc, PLUGINS) as sc, httpx.Client(timeout=5) as client:
            for _ in range(6):
                response = client.get(sc.url("main") + "/")
                assert response.status_code == 200
                assert response.text == "good"
        assert len(good.requests) == 6
        assert 1 <= len(bad.requests) <= 6


def test_a_request_body_is_replayed_on_the_retry_within_the_buffer_limit() -> None:
    with (
        Upstream(lambda r: Reply(status=503)) as bad,
        Upstream(lambda r: Reply(body=b"got " + r.body)) as good,
    ):
        doc = simple_config(bad.address, good.address, plugins=[{"name": "again"}])
        with running_sidecar(doc, PLUGINS) as sc, httpx.Client(timeout=5) as client:
            for _ in range(4):
                response = client.put(sc.url("main") + "/", content=b"payload")
                assert response.status_code == 200
                assert response.text == "got payload"
        assert bad.requests and all(r.body == b"payload" for r in bad.requests)


def test_a_body_over_the_buffer_limit_is_streamed_and_not_retried() -> None:
    with Upstream(lambda r: Reply(status=503)) as bad:
        doc = simple_config(bad.address, plugins=[{"name": "again", "config": {"buffer": 4}}])
        with running_sidecar(doc, PLUGINS) as sc:
            response = httpx.put(sc.url("main") + "/", content=b"x" * 100_000, timeout=5)
            assert response.status_code == 503
        assert len(bad.requests) == 1
        assert bad.requests[0].body == b"x" * 100_000


def _logged(log: io.StringIO) -> dict[str, Any]:
    assert wait_for(lambda: log.getvalue().endswith("\n"))
    entry: dict[str, Any] = json.loads(log.getvalue().splitlines()[-1])
    return entry


def test_a_failing_policy_gives_a_generic_500_and_logs_its_text() -> None:
    """Issue 13: the exception's text may hold internals; only the operator sees it."""
    with (
        Upstream() as up,
        running_sidecar(simple_config(up.address, plugins=[{"name": "broken"}]), PLUGINS) as sc,
    ):
        log = io.StringIO()
        sc.log_to(log)
        response = httpx.get(sc.url("main") + "/", headers={"x-request-id": "r-1"}, timeout=5)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error", "request_id": "r-1"}
        assert "policy bug" not in response.text
        entry = _logged(log)
        assert entry["response_flags"] == "PE" and "policy bug" in entry["error"]
        assert not up.requests


def test_connection_setup_runs_per_new_upstream_connection_and_can_refuse_it() -> None:
    CALLS.clear()
    with (
        Upstream() as up,
        running_sidecar(simple_config(up.address, plugins=[{"name": "pinned"}]), PLUGINS) as sc,
    ):
        response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 503
        assert "connection failure" in response.text
    assert [f"setup:{up.address}"] == CALLS


def test_sidemesh_config_applied_is_called_after_each_apply() -> None:
    APPLIED.clear()
    with Upstream() as up, running_sidecar(simple_config(up.address), PLUGINS) as sc:
        sc.apply(simple_config(up.address), version="v2")
    assert APPLIED == ["test:1", "v2:1"]


def test_a_mirrored_request_reaches_the_mirror_and_a_dead_mirror_changes_nothing() -> None:
    with (
        Upstream(lambda r: Reply(body=b"main")) as main,
        Upstream(lambda r: Reply(status=500, body=b"mirror")) as mirror,
    ):
        doc = simple_config(main.address, plugins=[{"name": "shadow"}])
        doc["clusters"].append({"name": "mirror", "endpoints": [{"address": mirror.address}]})
        with running_sidecar(doc, PLUGINS) as sc, httpx.Client(timeout=5) as client:
            response = client.post(sc.url("main") + "/p", content=b"body!", headers={"host": "svc"})
            assert (response.status_code, response.text) == (200, "main")
            assert wait_for(lambda: len(mirror.requests) == 1)
        copy = mirror.requests[0]
        assert (copy.method, copy.path, copy.body) == ("POST", "/p", b"body!")
        assert copy.headers["host"] == "svc-shadow"
    with Upstream(lambda r: Reply(body=b"main")) as main:
        doc = simple_config(main.address, plugins=[{"name": "shadow"}])
        doc["clusters"].append({"name": "mirror", "endpoints": [{"address": "127.0.0.1:9"}]})
        with running_sidecar(doc, PLUGINS) as sc, httpx.Client(timeout=5) as client:
            for _ in range(5):
                assert client.get(sc.url("main") + "/").text == "main"


def test_a_policy_cannot_inject_header_lines() -> None:
    with (
        Upstream() as up,
        running_sidecar(simple_config(up.address, plugins=[{"name": "smuggle"}]), PLUGINS) as sc,
    ):
        log = io.StringIO()
        sc.log_to(log)
        response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 500
        assert "invalid header field" in _logged(log)["error"]
    assert not up.requests


def test_attempt_durations_are_finer_than_the_event_loop_clock() -> None:
    # uvloop's clock moves in whole milliseconds; spans built from attempts need better.
    DURATIONS.clear()
    with (
        Upstream() as up,
        running_sidecar(simple_config(up.address, plugins=[{"name": "timing"}]), PLUGINS) as sc,
        httpx.Client(timeout=5) as client,
    ):
        for _ in range(5):
            client.get(sc.url("main") + "/")
    assert len(DURATIONS) == 5 and all(0 < d < 1 for d in DURATIONS)
    assert any(round(d * 1000, 6) % 1 for d in DURATIONS), DURATIONS
