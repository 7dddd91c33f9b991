"""The circuit policy across the workers of ``sidemesh proxy --concurrency 2`` (real
processes, real sockets): an ejection one worker makes is honoured by the other, and
``max_requests`` admits that many requests in total, not per worker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from sidemesh import testing


@contextlib.contextmanager
def workers(tmp_path: Path, circuit: dict[str, Any], *upstreams: str
            ) -> Iterator[tuple[str, str]]:
    """Two workers proxying ``/`` to ``upstreams`` with the circuit policy; yields the
    listener's and the admin API's URLs."""
    listen, admin = testing.free_port(), testing.free_port()
    doc = {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "connect_timeout": "1s", "load_balancer": "round_robin",
                      "endpoints": [{"address": a} for a in upstreams]}],
        "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"}, "cluster": "app",
                                   "plugins": [{"name": "circuit", "config": circuit}]}]}],
    }
    config = tmp_path / "sidemesh.yaml"
    config.write_text(yaml.safe_dump(doc))
    with testing.ProxyProcess("proxy", "-c", str(config), "--access-log", "off",
                      "--concurrency", "2") as proc:
        proc.wait_http(f"http://127.0.0.1:{admin}/ready", timeout=60)
        yield f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"


def get(url: str) -> int:
    # One connection per request: the kernel spreads connections over the workers.
    with httpx.Client(timeout=10) as client:
        return client.get(url).status_code


def served(admin: str) -> list[int]:
    return [w["requests"] for w in httpx.get(admin + "/workers", timeout=10).json()["workers"]]


def metric(admin: str, line: str) -> float:
    text = httpx.get(admin + "/metrics", timeout=10).text
    found = [v for v in text.splitlines() if v.startswith(line + " ")]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_an_ejection_by_one_worker_is_honoured_by_the_other(tmp_path: Path) -> None:
    circuit = {"consecutive_5xx": 3, "base_ejection_time": "60s", "max_ejection_percent": 50}
    with testing.Upstream(lambda r: testing.Reply(body=b"good")) as good, \
            testing.Upstream(lambda r: testing.Reply(status=503, body=b"bad")) as bad, \
            workers(tmp_path, circuit, good.address, bad.address) as (url, admin):

        def ejected() -> bool:
            clusters = httpx.get(admin + "/clusters", timeout=10).json()["clusters"]
            return any(e["ejected"] for e in clusters[0]["endpoints"]
                       if e["address"] == bad.address)

        for _ in range(200):
            get(url + "/warm")
            if ejected():
                break
        assert ejected(), "the failing endpoint was never ejected"
        # The ejection can come after as few as five requests, all of them possibly taken
        # by one worker; the other worker then has never seen the endpoint fail and can
        # only keep away from it through the shared ejection.
        reached, before = len(bad.requests), served(admin)

        answers = [get(url + "/after") for _ in range(60)]
        after = served(admin)
        assert all(a > b for a, b in zip(after, before, strict=True)), \
            f"one worker served nothing after the ejection: {before} -> {after}"
        assert len(bad.requests) == reached, "a worker sent to the ejected endpoint"
        assert answers == [200] * 60
        # One worker ejected it; the page counts the ejection once.
        ejections = 'sidemesh_circuit_ejections_total{cluster="app",reason="consecutive_5xx"}'
        assert metric(admin, ejections) == 1.0
        assert metric(admin, 'sidemesh_circuit_ejected_endpoints{cluster="app"}') == 1.0


def test_max_requests_counts_the_requests_of_every_worker(tmp_path: Path) -> None:
    release = threading.Event()

    async def hold(_: object) -> testing.Reply:
        await asyncio.to_thread(release.wait, 30)
        return testing.Reply(body=b"held")

    held: list[int] = []
    with testing.Upstream(hold) as up, workers(tmp_path, {"max_requests": 2}, up.address) as (
            url, admin):
        threads = [threading.Thread(target=lambda: held.append(get(url + "/hold")),
                                    daemon=True) for _ in range(2)]
        try:
            for n, thread in enumerate(threads, 1):
                thread.start()
                assert testing.wait_for(lambda n=n: len(up.requests) == n, timeout=10)
            # Whichever worker holds the two, neither may admit a third.
            refused = [get(url + "/more") for _ in range(30)]
            assert refused == [503] * 30
            assert all(served(admin)), "one worker answered none of the refused requests"
            assert len(up.requests) == 2
            overflow = 'sidemesh_circuit_overflow_total{cluster="app",limit="max_requests"}'
            assert metric(admin, overflow) == 30.0
        finally:
            release.set()
            for thread in threads:
                thread.join(10)
        assert held == [200, 200]
        # Completed requests give their slots back, in every worker.
        assert [get(url + "/again") for _ in range(10)] == [200] * 10
