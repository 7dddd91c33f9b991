"""Circuit breakers in a real sidecar: max_requests, max_connections with pending
requests, max_pending_requests and max_retries."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from sidemesh import ClusterView, testing


@contextmanager
def sidecar(*addresses: str, plugins: list[dict[str, Any]]) -> Iterator[testing.RunningSidecar]:
    with testing.running_sidecar(testing.simple_config(*addresses, plugins=plugins)) as sc:
        yield sc


def cluster(sc: testing.RunningSidecar) -> ClusterView:
    return sc.cluster("backend")


def concurrently(url: str, count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: httpx.get(url, timeout=20), range(count)))


def test_max_requests_overflow_answers_503_overloaded_at_once() -> None:
    circuit = {"name": "circuit", "config": {"max_requests": 1}}
    with (
        testing.Upstream(lambda _: testing.Reply(200, delay=0.5)) as up,
        sidecar(up.address, plugins=[circuit]) as sc,
    ):
        answers = concurrently(sc.url("main") + "/", 3)
        refused = [r for r in answers if r.status_code == 503]
        assert len(refused) == 2 and sum(r.status_code == 200 for r in answers) == 1
        assert all(r.headers["x-sidemesh-overloaded"] == "true" for r in refused)
        assert len(up.requests) == 1  # the refused ones never reached the upstream
        assert cluster(sc).overflow["max_requests"] == 2


def test_max_connections_makes_requests_wait_for_a_connection() -> None:
    circuit = {"name": "circuit", "config": {"max_connections": 1, "max_pending_requests": 10}}
    with (
        testing.Upstream(lambda _: testing.Reply(200, delay=0.1)) as up,
        sidecar(up.address, plugins=[circuit]) as sc,
    ):
        answers = concurrently(sc.url("main") + "/", 5)
        assert [r.status_code for r in answers] == [200] * 5
        assert up.connections == 1  # all five went over the one connection, in turn
        backend = cluster(sc)
        assert backend.overflow["max_connections"] >= 1
        assert backend.connections.pending == 0 and backend.connections.open == 1


def test_max_pending_requests_overflow_is_503_uo() -> None:
    circuit = {"name": "circuit", "config": {"max_connections": 1, "max_pending_requests": 1}}
    with (
        testing.Upstream(lambda _: testing.Reply(200, delay=0.5)) as up,
        sidecar(up.address, plugins=[circuit]) as sc,
    ):
        answers = concurrently(sc.url("main") + "/", 4)
        refused = [r for r in answers if r.status_code == 503]
        assert sum(r.status_code == 200 for r in answers) == 2  # one on the wire, one pending
        assert len(refused) == 2
        assert all(r.headers["x-sidemesh-overloaded"] == "true" for r in refused)
        assert "overflow" in refused[0].text
        assert cluster(sc).overflow["max_pending_requests"] == 2
        assert up.connections == 1


def test_limits_are_shared_by_routes_and_counted_once_per_connection() -> None:
    circuit = {"name": "circuit", "config": {"max_connections": 2}}
    with (
        testing.Upstream() as a,
        testing.Upstream() as b,
        sidecar(a.address, b.address, plugins=[circuit]) as sc,
    ):
        for _ in range(20):
            assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200
        assert cluster(sc).connections.open == 2
        assert cluster(sc).connections.max_connections == 2


def test_max_retries_caps_retries_whatever_the_budget() -> None:
    chain = [
        {"name": "retry", "config": {"retry_on": ["5xx"], "budget": {"min_concurrency": 100}}},
        {"name": "circuit", "config": {"max_retries": 0}},
    ]
    with (
        testing.Upstream(lambda _: testing.Reply(503)) as up,
        sidecar(up.address, plugins=chain) as sc,
    ):
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 503
        assert len(up.requests) == 1
        assert cluster(sc).overflow["max_retries"] == 1
