"""Load balancers, connect timeouts and response flags, against real upstreams."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from sidemesh.testing import (
    ProxyProcess,
    Reply,
    Upstream,
    free_port,
    running_sidecar,
    simple_config,
    wait_for,
)


def test_round_robin_alternates_between_endpoints() -> None:
    with (
        Upstream(lambda r: Reply(body=b"a")) as a,
        Upstream(lambda r: Reply(body=b"b")) as b,
        running_sidecar(simple_config(a.address, b.address)) as sc,
        httpx.Client() as client,
    ):
        bodies = [client.get(sc.url("main") + "/", timeout=5).text for _ in range(10)]
    assert Counter(bodies) == {"a": 5, "b": 5}
    assert all(x != y for x, y in itertools.pairwise(bodies))


def test_random_spreads_over_every_endpoint() -> None:
    with Upstream(lambda r: Reply(body=b"a")) as a, Upstream(lambda r: Reply(body=b"b")) as b:
        doc = simple_config(a.address, b.address, load_balancer="random")
        with running_sidecar(doc) as sc, httpx.Client() as client:
            bodies = Counter(client.get(sc.url("main") + "/", timeout=5).text for _ in range(200))
    assert bodies["a"] > 50 and bodies["b"] > 50


def test_least_request_avoids_the_endpoint_that_is_busy() -> None:
    release = threading.Event()

    async def hold(_: object) -> Reply:
        await asyncio.to_thread(release.wait, 30)
        return Reply(body=b"slow")

    with (
        Upstream(hold) as busy,
        Upstream(lambda r: Reply(body=b"fast")) as free,
        running_sidecar(simple_config(busy.address, free.address,
                                      load_balancer="least_request")) as sc,
        ThreadPoolExecutor(1) as pool,
    ):
        url = sc.url("main") + "/"
        try:
            # Two idle endpoints tie and either may be picked: send until one request is
            # held by the busy endpoint.
            for _ in range(40):
                held = pool.submit(httpx.get, url, timeout=20)
                assert wait_for(lambda f=held: f.done() or len(busy.requests) == 1, timeout=10)
                if len(busy.requests) == 1:
                    break
            assert len(busy.requests) == 1
            # The better of two choices by requests in flight: every new request goes to
            # the free endpoint. Round robin would send the second one to the busy one.
            answers = [httpx.get(url, timeout=5).text for _ in range(20)]
        finally:
            release.set()
        assert answers == ["fast"] * 20
        assert held.result(timeout=20).text == "slow"
        assert len(busy.requests) == 1 and len(free.requests) >= 20


def test_connect_timeout_is_503_with_flag_uf() -> None:
    # A listener whose accept queue is full never completes new handshakes.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(blackhole.getsockname())
            fillers.append(filler)
        host, port = blackhole.getsockname()
        address = f"{host}:{port}"
        doc = simple_config(address)
        doc["clusters"][0]["connect_timeout"] = "200ms"
        with running_sidecar(doc) as sc:
            response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 503
        assert "connection failure" in response.text
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


def test_access_log_carries_envoy_response_flags(tmp_path: Path) -> None:
    listen, dead = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream(lambda r: Reply(delay=1.0)) as slow:
        config.write_text(yaml.safe_dump({
            "node": {"service": "web"},
            "clusters": [
                {"name": "dead", "endpoints": [{"address": f"127.0.0.1:{dead}"}]},
                {"name": "slow", "endpoints": [{"address": slow.address}]},
            ],
            "listeners": [{"name": "in", "address": f"127.0.0.1:{listen}", "routes": [
                {"name": "dead", "match": {"prefix": "/dead"}, "cluster": "dead"},
                {"name": "slow", "match": {"prefix": "/slow"}, "cluster": "slow",
                 "timeout": "200ms"},
            ]}],
        }))  # fmt: skip
        with ProxyProcess("proxy", "-c", str(config)) as proc:
            base = f"http://127.0.0.1:{listen}"
            proc.wait_http(base + "/nothing", status=404)
            assert httpx.get(base + "/dead", timeout=5).status_code == 503
            assert httpx.get(base + "/slow", timeout=5).status_code == 504
    lines = [json.loads(x) for x in proc.output.splitlines() if x.startswith('{"method"')]
    flags = {line["path"]: line["response_flags"] for line in lines}
    assert flags["/nothing"] == "NR"
    assert flags["/dead"] == "UF"
    assert flags["/slow"] == "UT"
