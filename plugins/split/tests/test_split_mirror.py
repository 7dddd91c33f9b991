"""Mirror traffic: shadow copies arrive at the mirror with a ``-shadow`` Host, for the
configured share of requests, and a dead or slow mirror changes nothing for the client
(neither its answers nor its waiting: only generous bounds are asserted)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from sidemesh import testing

MIRROR_DELAY = 2.0


@pytest.fixture
def primary() -> Iterator[testing.Upstream]:
    with testing.Upstream(lambda _: testing.Reply(body=b"primary"), name="primary") as up:
        yield up


def config(primary: testing.Upstream, mirror_address: str,
           mirror: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": {"service": "productpage"},
        "clusters": [
            {"name": "reviews", "connect_timeout": "1s", "endpoints": [
                {"address": primary.address, "labels": {"version": "v1"}},
                {"address": mirror_address, "labels": {"version": "v2"}}],
             "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                         {"name": "v2", "labels": {"version": "v2"}}]},
            {"name": "shadow", "connect_timeout": "1s",
             "endpoints": [{"address": mirror_address}]},
        ],
        "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "routes": [
            {"name": "reviews", "match": {"prefix": "/"}, "cluster": "reviews", "timeout": "5s",
             "plugins": [{"name": "split", "config": {
                 "destinations": [{"subset": "v1"}], "mirror": mirror}}]},
        ]}],
    }


def test_copies_arrive_at_the_mirror_with_a_shadow_host(primary: testing.Upstream) -> None:
    with testing.Upstream(lambda _: testing.Reply(status=500, body=b"mirror")) as mirror, \
            testing.running_sidecar(config(primary, mirror.address, {"subset": "v2"})) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        answers = [client.post("/reviews/1", content=b"payload", headers={"host": "reviews"})
                   for _ in range(20)]
        assert testing.wait_for(lambda: len(mirror.requests) == 20)
    assert {(r.status_code, r.text) for r in answers} == {(200, "primary")}
    assert len(primary.requests) == 20
    assert {(r.method, r.path, r.headers["host"], r.body) for r in mirror.requests} == {
        ("POST", "/reviews/1", "reviews-shadow", b"payload")}


def test_percent_mirrors_that_share_of_requests(primary: testing.Upstream) -> None:
    labels = {"listener": "outbound", "route": "reviews", "destination": "shadow"}
    before = REGISTRY.get_sample_value("sidemesh_split_mirrored_total", labels) or 0.0
    with testing.Upstream() as mirror, \
            testing.running_sidecar(config(primary, mirror.address,
                                   {"cluster": "shadow", "percent": 25})) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        for _ in range(400):
            assert client.get("/r").status_code == 200
        counted = (REGISTRY.get_sample_value("sidemesh_split_mirrored_total", labels) or 0.0) \
            - before
        assert testing.wait_for(lambda: len(mirror.requests) == counted)
    # 25% of 400 is 100; one standard deviation is about 9.
    assert 55 < counted < 145


def test_a_dead_mirror_changes_nothing_for_the_client(primary: testing.Upstream) -> None:
    dead = f"127.0.0.1:{testing.free_port()}"
    with testing.running_sidecar(config(primary, dead, {"cluster": "shadow"})) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        started = time.monotonic()
        answers = [client.get("/r") for _ in range(50)]
        took = time.monotonic() - started
    assert {(r.status_code, r.text) for r in answers} == {(200, "primary")}
    assert len(primary.requests) == 50
    assert took < 10, "does not hang on the dead mirror"


def test_a_slow_mirror_does_not_delay_the_client(primary: testing.Upstream) -> None:
    with testing.Upstream(lambda _: testing.Reply(delay=MIRROR_DELAY, body=b"slow")) as mirror, \
            testing.running_sidecar(config(primary, mirror.address, {"cluster": "shadow"})) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        started = time.monotonic()
        answers = [client.get("/r") for _ in range(10)]
        took = time.monotonic() - started
        answered_then = len(mirror.requests)
        assert testing.wait_for(lambda: len(mirror.requests) == 10)
    assert {(r.status_code, r.text) for r in answers} == {(200, "primary")}
    # Waiting for the mirror would take 10 x 2 s; the client's ten requests were all
    # answered before a single mirror answer could have been.
    assert took < MIRROR_DELAY
    assert answered_then >= 1
