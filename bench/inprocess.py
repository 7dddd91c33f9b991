"""CPU time of sidemesh's request path, measured in-process without sockets.

wrk figures on a shared 2-core machine move by 10-20 % between runs; this measures
only the proxy's own Python work per request, repeatably enough to compare two
versions of the data path (within ~5 %). A real sidecar (config, snapshot, routes,
metrics) is driven by feeding request bytes into its listener protocol; the upstream
is a stand-in transport that answers every request head with a canned nginx-like
response on the next loop iteration. Everything between the two is the real code.

Usage: python bench/inprocess.py [--requests 20000] [--profile] [--plugins retry,circuit]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import uvloop

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import build
from sidemesh.datapath.downstream import DownstreamConnection
from sidemesh.datapath.pool import ConnectionPool, UpstreamConnection
from sidemesh.datapath.sidecar import Sidecar
from sidemesh.process.sidecar import new_sidecar
from sidemesh.testing import simple_config

__all__ = ["main"]

#: plugins on the route (``--plugins retry,circuit``); none by default.
PLUGINS: list[str] = []

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:15991\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 15:10:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Connection: keep-alive\r\n\r\n" + b"x" * 100
)


class _Transport:
    """Enough of a transport for both sides: writes are counted; an upstream answers."""

    def __init__(self, answer: UpstreamConnection | None = None) -> None:
        self.answer = answer
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.answer is not None:
            asyncio.get_running_loop().call_soon(self.answer.data_received, RESPONSE)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def _stand_in_pool(sidecar: Sidecar) -> None:
    """Give every endpoint a pool holding one idle connection on a stand-in transport
    (one request is in flight at a time, so one connection is always enough)."""
    assert sidecar.snapshot is not None
    for cluster in sidecar.snapshot.clusters.values():
        for endpoint in cluster.endpoints:
            pool = endpoint.pools[None] = ConnectionPool(endpoint.host, endpoint.port)
            conn = UpstreamConnection(pool)
            transport = _Transport(conn)
            conn.connection_made(transport)  # type: ignore[arg-type]
            pool.put(conn)


async def _measure(requests: int, profile: bool) -> float:
    registry = PluginRegistry.load()
    sidecar = new_sidecar(registry)
    plugins = [{"name": name} for name in PLUGINS]
    doc = simple_config("127.0.0.1:9", plugins=plugins)
    await sidecar.apply(build(doc, registry), "bench", "bench")
    _stand_in_pool(sidecar)
    conn = DownstreamConnection(sidecar.handle, "main", "http", lambda _: None)
    client = _Transport()
    conn.connection_made(client)  # type: ignore[arg-type]

    async def run(count: int) -> None:
        for _ in range(count):
            conn.data_received(REQUEST)
            # the handler's task, the held writes (writes.py), the upstream answer, the
            # response: a few iterations
            for _ in range(6):
                await asyncio.sleep(0)

    await run(500)
    before = client.writes
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler is not None:
        profiler.enable()
    await run(requests)
    if profiler is not None:
        profiler.disable()
    elapsed = time.process_time() - start
    if client.writes - before != requests:
        raise SystemExit(f"expected {requests} responses, got {client.writes - before}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile table too")
    parser.add_argument("--plugins", default="", help="comma-separated plugins on the route")
    args = parser.parse_args()
    PLUGINS.extend(name for name in args.plugins.split(",") if name)
    per_request = uvloop.run(_measure(args.requests, args.profile))
    print(
        f"{per_request:.1f} us of CPU per proxied request "
        f"(includes this driver's own loop iterations: compare versions, not absolutes)"
    )


if __name__ == "__main__":
    main()
