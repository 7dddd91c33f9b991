"""Circuit breakers in a real sidecar: max_requests, max_connections with pending
requests, max_pending_requests and max_retries."""

from __future__ import annotations

import asyncio
import threading
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


@contextmanager
def held_upstream() -> Iterator[tuple[testing.Upstream, threading.Event]]:
    """An upstream that holds every request until the event is set: the limits are
    checked while requests are surely in flight, however slow the machine."""
    release = threading.Event()

    async def hold(_: object) -> testing.Reply:
        await asyncio.to_thread(release.wait, 30)
        return testing.Reply(200)

    with testing.Upstream(hold) as up:
        try:
            yield up, release
        finally:
            release.set()


def test_max_requests_overflow_answers_503_overloaded_at_once() -> None:
    circuit = {"name": "circuit", "config": {"max_requests": 1}}
    with (
        held_upstream() as (up, release),
        sidecar(up.address, plugins=[circuit]) as sc,
        ThreadPoolExecutor(1) as pool,
    ):
        url = sc.url("main") + "/"
        try:
            held = pool.submit(httpx.get, url, timeout=20)
            assert testing.wait_for(lambda: len(up.requests) == 1, timeout=10)
            # Answered while the one in flight is still held: refused, not queued.
            refused = [httpx.get(url, timeout=5) for _ in range(2)]
        finally:
            release.set()
        assert held.result(timeout=20).status_code == 200
        assert [r.status_code for r in refused] == [503, 503]
        assert all(r.headers["x-sidemesh-overloaded"] == "true" for r in refused)
        assert len(up.requests) == 1  # the refused ones never reached the upstream
        assert cluster(sc).overflow["max_requests"] == 2


def test_max_connections_makes_requests_wait_for_a_connection() -> None:
    circuit = {"name": "circuit", "config": {"max_connections": 1, "max_pending_requests": 10}}
    with (
        held_upstream() as (up, release),
        sidecar(up.address, plugins=[circuit]) as sc,
        ThreadPoolExecutor(5) as pool,
    ):
        try:
            answers = [pool.submit(httpx.get, sc.url("main") + "/", timeout=20)
                       for _ in range(5)]
            # One on the wire; four wait for its connection instead of opening their own.
            assert testing.wait_for(
                lambda: len(up.requests) == 1 and cluster(sc).connections.pending == 4,
                timeout=10)
        finally:
            release.set()
        assert [a.result(timeout=20).status_code for a in answers] == [200] * 5
        assert up.connections == 1  # all five went over the one connection, in turn
        backend = cluster(sc)
        assert backend.overflow["max_connections"] == 4
        assert backend.connections.pending == 0 and backend.connections.open == 1


def test_max_pending_requests_overflow_is_503_uo() -> None:
    circuit = {"name": "circuit", "config": {"max_connections": 1, "max_pending_requests": 1}}
    with (
        held_upstream() as (up, release),
        sidecar(up.address, plugins=[circuit]) as sc,
        ThreadPoolExecutor(2) as pool,
    ):
        url = sc.url("main") + "/"
        try:
            on_the_wire = pool.submit(httpx.get, url, timeout=20)
            assert testing.wait_for(lambda: len(up.requests) == 1, timeout=10)
            pending = pool.submit(httpx.get, url, timeout=20)
            assert testing.wait_for(lambda: cluster(sc).connections.pending == 1, timeout=10)
            refused = [httpx.get(url, timeout=5) for _ in range(2)]
        finally:
            release.set()
        assert [on_the_wire.result(timeout=20).status_code,
                pending.result(timeout=20).status_code] == [200, 200]
        assert [r.status_code for r in refused] == [503, 503]
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
