"""The retry policy in a real sidecar against real upstreams that fail on command."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from sidemesh import Response, testing


def script(*replies: testing.Reply) -> Callable[[testing.SeenRequest], testing.Reply]:
    """Answer with ``replies`` in turn, then repeat the last one."""
    calls = [0]

    def handler(_: testing.SeenRequest) -> testing.Reply:
        reply = replies[min(calls[0], len(replies) - 1)]
        calls[0] += 1
        return reply

    return handler


@contextmanager
def sidecar(
    *addresses: str, retry: dict[str, Any] | None = None, timeout: str = "15s", **extra: Any
) -> Iterator[tuple[testing.RunningSidecar, io.StringIO]]:
    plugins: list[dict[str, Any]] = [{"name": "retry", "config": retry or {}}]
    plugins += extra.get("more", [])
    doc = testing.simple_config(*addresses, plugins=plugins, timeout=timeout)
    with testing.running_sidecar(doc) as sc:
        log = io.StringIO()
        sc.log_to(log)
        yield sc, log


def access_lines(log: io.StringIO, count: int) -> list[dict[str, Any]]:
    assert testing.wait_for(lambda: log.getvalue().count("\n") >= count)
    return [json.loads(line) for line in log.getvalue().splitlines()]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def attempt_counts(up: testing.Upstream) -> list[str]:
    return [r.headers.get("x-sidemesh-attempt-count", "") for r in up.requests]


def test_defaults_retry_503_and_send_the_attempt_count() -> None:
    with (
        testing.Upstream(
            script(testing.Reply(503), testing.Reply(503), testing.Reply(200, b"third"))
        ) as up,
        sidecar(up.address) as (sc, log),
    ):
        r = httpx.get(sc.url("main") + "/x", timeout=10)
        assert (r.status_code, r.text) == (200, "third")
        assert attempt_counts(up) == ["1", "2", "3"]
        assert access_lines(log, 1)[0]["attempts"] == 3


def test_defaults_do_not_retry_500_and_stop_after_two_retries() -> None:
    with testing.Upstream(lambda _: testing.Reply(500)) as up, sidecar(up.address) as (sc, _):
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 500
        assert len(up.requests) == 1
    with testing.Upstream(lambda _: testing.Reply(503)) as up, sidecar(up.address) as (sc, log):
        before = metric("sidemesh_retry_overflow_total", cluster="backend", reason="attempts")
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 503
        assert len(up.requests) == 3  # the first try and attempts=2 retries
        line = access_lines(log, 1)[0]
        assert line["attempts"] == 3 and "URX" in line["response_flags"]
        after = metric("sidemesh_retry_overflow_total", cluster="backend", reason="attempts")
        assert after == before + 1


def test_retry_on_5xx_gateway_error_and_retriable_4xx() -> None:
    cases: Sequence[tuple[list[str], int, bool]] = [
        (["5xx"], 500, True),
        (["gateway-error"], 502, True),
        (["gateway-error"], 500, False),
        (["retriable-4xx"], 409, True),
        (["retriable-4xx"], 404, False),
    ]
    for retry_on, status, retried in cases:
        with (
            testing.Upstream(script(testing.Reply(status), testing.Reply(200))) as up,
            sidecar(up.address, retry={"retry_on": retry_on}) as (sc, _),
        ):
            r = httpx.get(sc.url("main") + "/", timeout=10)
            assert r.status_code == (200 if retried else status), (retry_on, status)
            assert len(up.requests) == (2 if retried else 1)


def test_a_response_from_an_overloaded_sidecar_is_never_retried() -> None:
    # What another sidecar's limit answers (the core's own overflow response), as it
    # arrives over the wire: 503 with x-sidemesh-overloaded: true.
    shed = Response.overflow()
    overloaded = testing.Reply(shed.status, shed.body, dict(shed.headers))
    config = {"attempts": 3, "retry_on": ["5xx", "gateway-error", "retriable-status-codes"]}
    with (
        testing.Upstream(lambda _: overloaded) as up,
        sidecar(up.address, retry=config) as (sc, log),
    ):
        r = httpx.get(sc.url("main") + "/", timeout=10)
        assert (r.status_code, r.headers["x-sidemesh-overloaded"]) == (503, "true")
        assert len(up.requests) == 1
        line = access_lines(log, 1)[0]
        assert (line["attempts"], line["retry"]) == (1, "not retried: x-sidemesh-overloaded")
    # Whatever its status: the header alone says the upstream is shedding load.
    with (
        testing.Upstream(
            lambda _: testing.Reply(502, headers={"X-Sidemesh-Overloaded": "1"})
        ) as up,
        sidecar(up.address, retry=config) as (sc, _),
    ):
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 502
        assert len(up.requests) == 1
    # The same 503 without the header is retried as usual.
    with (
        testing.Upstream(lambda _: testing.Reply(503, shed.body)) as up,
        sidecar(up.address, retry=config) as (sc, _),
    ):
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 503
        assert len(up.requests) == 4


def test_retriable_status_codes_list() -> None:
    config = {"retry_on": ["retriable-status-codes"], "retriable_status_codes": [429]}
    with (
        testing.Upstream(script(testing.Reply(429), testing.Reply(200))) as up,
        sidecar(up.address, retry=config) as (
            sc,
            _,
        ),
    ):
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200
        assert len(up.requests) == 2


def test_reset_is_retried_by_default() -> None:
    with (
        testing.Upstream(
            script(testing.Reply(reset=True), testing.Reply(200, b"after reset"))
        ) as up,
        sidecar(up.address) as (sc, _),
    ):
        assert httpx.get(sc.url("main") + "/", timeout=10).text == "after reset"


def test_a_response_cut_after_its_head_went_downstream_is_not_retried() -> None:
    # As in Envoy: once the head is on its way to the client, the answer is the client's;
    # the proxy cuts the client's connection too, and logs the upstream's cut (UC).
    cut = testing.Reply(200, b"part", headers={"content-length": "10"}, close=True)
    with (
        testing.Upstream(script(cut, testing.Reply(200, b"whole"))) as up,
        sidecar(up.address, retry={"retry_on": ["reset", "5xx"]}) as (sc, log),
    ):
        with httpx.Client(timeout=10) as client, client.stream("GET", sc.url("main")) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="received 4 bytes, expected 10"):
                r.read()
        line = access_lines(log, 1)[0]
        assert (line["status"], line["response_flags"], line["attempts"]) == (200, "UC", 1)
        assert len(up.requests) == 1


def test_connect_failure_retries_on_another_host() -> None:
    dead = f"127.0.0.1:{testing.free_port()}"  # nothing listens there: connection refused
    with (
        testing.Upstream(lambda _: testing.Reply(200, b"alive")) as up,
        sidecar(dead, up.address) as (sc, log),
    ):
        for _ in range(6):
            assert httpx.get(sc.url("main") + "/", timeout=10).text == "alive"
        lines = access_lines(log, 6)
        # Requests that met the dead host went on to the live one, once.
        assert {line["attempts"] for line in lines} <= {1, 2}
        assert any(line["attempts"] == 2 for line in lines)
        assert all(line["upstream"] == up.address for line in lines)


def test_retries_avoid_hosts_already_tried() -> None:
    with (
        testing.Upstream(lambda _: testing.Reply(503), name="bad") as bad,
        testing.Upstream(name="good") as good,
        sidecar(bad.address, good.address, retry={"attempts": 1}) as (sc, _),
    ):
        for _ in range(10):
            assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200
        # Every request that met the bad host was retried on the good one, never again there.
        assert len(bad.requests) == len(
            [r for r in good.requests if r.headers.get("x-sidemesh-attempt-count") == "2"]
        )


def test_per_try_timeout_covers_the_first_try_too() -> None:
    with testing.Upstream(
        script(testing.Reply(200, b"slow", delay=3), testing.Reply(200, b"fast"))
    ) as up:
        config = {"per_try_timeout": "200ms"}
        with sidecar(up.address, retry=config) as (sc, log):
            started = time.monotonic()
            r = httpx.get(sc.url("main") + "/", timeout=10)
            assert (r.status_code, r.text) == (200, "fast")
            assert time.monotonic() - started < 2.5  # did not wait for the slow answer
            assert access_lines(log, 1)[0]["attempts"] == 2


def test_route_timeout_covers_all_attempts_and_ends_with_504() -> None:
    with (
        testing.Upstream(lambda _: testing.Reply(200, delay=3)) as up,
        sidecar(up.address, retry={"retry_on": ["5xx"]}, timeout="400ms") as (sc, log),
    ):
        r = httpx.get(sc.url("main") + "/", timeout=10)
        assert r.status_code == 504
        line = access_lines(log, 1)[0]
        assert line["attempts"] == 1 and "UT" in line["response_flags"]


def test_non_idempotent_methods_are_not_retried_unless_asked() -> None:
    with (
        testing.Upstream(script(testing.Reply(503), testing.Reply(200))) as up,
        sidecar(up.address) as (sc, _),
    ):
        assert httpx.post(sc.url("main") + "/", content=b"pay", timeout=10).status_code == 503
        assert len(up.requests) == 1
    with (
        testing.Upstream(script(testing.Reply(503), testing.Reply(200))) as up,
        sidecar(up.address, retry={"retry_non_idempotent": True}) as (sc, _),
    ):
        r = httpx.post(sc.url("main") + "/", content=b"pay", timeout=10)
        assert r.status_code == 200
        assert [req.body for req in up.requests] == [b"pay", b"pay"]  # body replayed
    with (
        testing.Upstream(script(testing.Reply(503), testing.Reply(200))) as up,
        sidecar(up.address) as (sc, _),
    ):
        assert httpx.put(sc.url("main") + "/", content=b"doc", timeout=10).status_code == 200
        assert [req.body for req in up.requests] == [b"doc", b"doc"]


def test_body_over_buffer_limit_is_streamed_and_not_retried() -> None:
    big = b"x" * 64 * 1024
    with (
        testing.Upstream(script(testing.Reply(503), testing.Reply(200))) as up,
        sidecar(up.address, retry={"buffer_limit": 1024}) as (sc, _),
    ):
        assert httpx.put(sc.url("main") + "/", content=big, timeout=10).status_code == 503
        assert len(up.requests) == 1 and up.requests[0].body == big


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    with (
        testing.Upstream(
            script(testing.Reply(503, headers={"retry-after": "1"}), testing.Reply(200))
        ) as up,
        sidecar(up.address) as (sc, _),
    ):
        started = time.monotonic()
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200
        assert time.monotonic() - started >= 0.95  # waited as asked
    with (
        testing.Upstream(
            script(testing.Reply(503, headers={"retry-after": "30"}), testing.Reply(200))
        ) as up,
        sidecar(up.address, retry={"max_retry_after": "2s"}) as (sc, _),
    ):
        r = httpx.get(sc.url("main") + "/", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert len(up.requests) == 1
    # Within the cap but past the route's deadline: not waited for either.
    with (
        testing.Upstream(
            script(testing.Reply(503, headers={"retry-after": "3"}), testing.Reply(200))
        ) as up,
        sidecar(up.address, timeout="1s") as (sc, _),
    ):
        started = time.monotonic()
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 503
        assert time.monotonic() - started < 2.5 and len(up.requests) == 1


def _concurrently(url: str, count: int) -> list[int]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: httpx.get(url, timeout=20).status_code, range(count)))


def test_retry_budget_bounds_concurrent_retries() -> None:
    with testing.Upstream(lambda _: testing.Reply(503, delay=0.3)) as up:
        config = {"budget": {"ratio": 0.0, "min_concurrency": 1}}
        with sidecar(up.address, retry=config) as (sc, log):
            before = metric("sidemesh_retry_overflow_total", cluster="backend", reason="budget")
            assert _concurrently(sc.url("main") + "/", 8) == [503] * 8
            overflowed = (
                metric("sidemesh_retry_overflow_total", cluster="backend", reason="budget") - before
            )
            assert overflowed >= 1
            assert len(up.requests) < 8 * 3
            lines = access_lines(log, 8)
            assert sum("UO" in line["response_flags"] for line in lines) == overflowed
            cluster = sc.cluster("backend")
            assert cluster.overflow["retry_budget"] == overflowed
            assert cluster.retries.active == 0  # every retry in flight was given back


def test_defaults_prevent_a_retry_storm() -> None:
    with (
        testing.Upstream(lambda _: testing.Reply(503, delay=0.2)) as up,
        sidecar(up.address) as (sc, _),
    ):
        assert _concurrently(sc.url("main") + "/", 30) == [503] * 30
        # Without a budget 30 failing requests would make 90 attempts.
        assert len(up.requests) < 60


def test_retry_metrics() -> None:
    with (
        testing.Upstream(script(testing.Reply(503), testing.Reply(200))) as up,
        sidecar(up.address) as (sc, _),
    ):
        attempts = metric("sidemesh_retry_attempts_total", cluster="backend")
        success = metric("sidemesh_retry_success_total", cluster="backend")
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200
        assert metric("sidemesh_retry_attempts_total", cluster="backend") == attempts + 1
        assert metric("sidemesh_retry_success_total", cluster="backend") == success + 1
