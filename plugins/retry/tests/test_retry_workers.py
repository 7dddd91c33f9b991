"""``max_retries`` across the workers of ``sidemesh proxy --concurrency 2`` (real
processes, real sockets): the retries in flight of every worker count against it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import yaml

from sidemesh import testing


def get(url: str, timeout: float = 30) -> int:
    # One connection per request: the kernel spreads connections over the workers.
    with httpx.Client(timeout=timeout) as client:
        return client.get(url).status_code


def test_max_retries_counts_the_retries_of_every_worker(tmp_path: Path) -> None:
    release = threading.Event()

    async def first_fails_retries_wait(seen: testing.SeenRequest) -> testing.Reply:
        if seen.headers.get("x-sidemesh-attempt-count") == "1":
            return testing.Reply(status=503, body=b"busy")
        await asyncio.to_thread(release.wait, 30)
        return testing.Reply(body=b"retried")

    listen, admin = testing.free_port(), testing.free_port()
    plugins = [{"name": "retry", "config": {"attempts": 2}},
               {"name": "circuit", "config": {"max_retries": 1}}]
    answers: list[int] = []
    with testing.Upstream(first_fails_retries_wait) as up:
        doc = {
            "node": {"service": "web"},
            "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "app", "connect_timeout": "1s",
                          "endpoints": [{"address": up.address}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                           "routes": [{"name": "app", "match": {"prefix": "/"},
                                       "cluster": "app", "plugins": plugins}]}],
        }
        config = tmp_path / "sidemesh.yaml"
        config.write_text(yaml.safe_dump(doc))
        with testing.ProxyProcess("proxy", "-c", str(config), "--access-log", "off",
                                  "--concurrency", "2") as proc:
            base = f"http://127.0.0.1:{admin}"
            proc.wait_http(base + "/ready", timeout=60)
            url = f"http://127.0.0.1:{listen}/r"
            held = threading.Thread(target=lambda: answers.append(get(url)), daemon=True)
            held.start()
            try:
                assert testing.wait_for(lambda: len(up.requests) == 2, timeout=10)
                # One retry is in flight; neither worker may start a second one.
                refused = [get(url, timeout=5) for _ in range(30)]
                assert refused == [503] * 30
                workers = httpx.get(base + "/workers", timeout=10).json()["workers"]
                assert all(w["requests"] for w in workers), workers
                retries = [r for r in up.requests
                           if r.headers.get("x-sidemesh-attempt-count") != "1"]
                assert len(retries) == 1
                metrics = httpx.get(base + "/metrics", timeout=10).text
                assert 'sidemesh_circuit_overflow_total{cluster="app",limit="max_retries"} 30.0' \
                    in metrics
            finally:
                release.set()
                held.join(30)
    assert answers == [200]
