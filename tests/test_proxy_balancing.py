"""Load balancers, connect timeouts and response flags, against real upstreams."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import Counter
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
    with (
        Upstream(lambda r: Reply(body=b"slow", delay=1.0)) as busy,
        Upstream(lambda r: Reply(body=b"fast", delay=0.02)) as free,
    ):
        doc = simple_config(busy.address, free.address, load_balancer="least_request")
        with running_sidecar(doc) as sc:
            results: list[str] = []

            def call() -> None:
                results.append(httpx.get(sc.url("main") + "/", timeout=10).text)

            threads = [threading.Thread(target=call) for _ in range(40)]
            for thread in threads:
                # Arrivals spread over ~0.6 s, as traffic is: the slow endpoint keeps
                # its requests for 1 s, the fast one for 20 ms.
                thread.start()
                time.sleep(0.015)
            for thread in threads:
                thread.join(15)
    # round robin would send 20 of 40 to the slow endpoint; picking the less loaded of
    # two sends new requests away from it as soon as it holds more in flight.
    assert len(results) == 40
    assert Counter(results)["slow"] <= 10, Counter(results)


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
