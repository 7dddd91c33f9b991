"""Shadow traffic: fire-and-forget copies of answered requests (``Request.mirror``).

A copy goes out after the client has its answer, so neither its latency nor its
failure can reach the client; its answer is read and thrown away. As in Envoy, the copy's
Host carries a ``-shadow`` suffix so the receiving service can tell it apart.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidemesh.datapath.body import RequestBody
from sidemesh.datapath.exchange import UpstreamError, UpstreamExchange
from sidemesh.datapath.messages import Headers, Request

if TYPE_CHECKING:
    from sidemesh.datapath.cluster import Cluster, Endpoint
    from sidemesh.datapath.snapshot import Snapshot

__all__ = ["MIRROR_BUFFER", "send_mirrors"]

#: the largest request body that is kept to be mirrored.
MIRROR_BUFFER = 1024 * 1024

#: copies in flight (a reference keeps each task alive until it is done).
_SHADOWS: set[asyncio.Task[None]] = set()


def send_mirrors(request: Request, body: RequestBody, snapshot: Snapshot, timeout: float) -> None:
    """Start one shadow copy of ``request`` per ``request.mirrors`` entry."""
    payload = body.kept()
    if payload is None:
        request.log["mirror"] = "skipped: body not buffered"
        return
    headers = Headers._trusted(
        [(k, v) for k, v in request.headers if k not in ("content-length", "transfer-encoding")]
    )
    headers.set("host", f"{request.host.split(':')[0]}-shadow")
    if payload or request.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        headers.set("content-length", str(len(payload)))
    shadow = Request(request.method, request.path, request.host, headers, request.connection,
                     request.listener, request.scheme, request.version)
    loop = asyncio.get_running_loop()
    for cluster_name, subset in request.mirrors:
        cluster = snapshot.clusters.get(cluster_name)
        if cluster is None:
            continue
        candidates = cluster.subsets.get(subset, []) if subset else cluster.available()
        if candidates:
            copy = _shadow(cluster.pick(candidates), shadow, payload, cluster, timeout)
            task = loop.create_task(copy)
            _SHADOWS.add(task)
            task.add_done_callback(_SHADOWS.discard)


def _nothing() -> None:
    return None


async def _shadow(
    endpoint: Endpoint, request: Request, payload: bytes, cluster: Cluster, timeout: float
) -> None:
    """Send one copy and read its answer away; every failure is only counted."""
    pool = endpoint.pools.get(None)
    if pool is None:
        pool = endpoint.pools[None] = cluster.new_pool(endpoint, None)
    upstream: UpstreamExchange | None = None
    outcome = "ok"
    try:
        async with asyncio.timeout(timeout):
            upstream = await pool.acquire(cluster.connect_timeout)
            body = None
            if payload:
                body = RequestBody(False, _nothing, _nothing)
                body.feed(payload)
                body.feed_eof()
            head = upstream.start(request, body, False, None)
            upstream.attach(_DISCARD)
            await head
            if not upstream.finished():
                await upstream.done_future()
        upstream.release()
    except (TimeoutError, UpstreamError, OSError):
        outcome = "failed"
        if upstream is not None:
            upstream.close()
    endpoint.stats[f"mirror_{outcome}"] = endpoint.stats.get(f"mirror_{outcome}", 0) + 1


class _Discard:
    def write_body(self, data: bytes) -> None:
        return None

    def pause_source(self) -> bool:
        return False


_DISCARD = _Discard()
