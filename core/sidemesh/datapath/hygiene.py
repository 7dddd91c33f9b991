"""Connection hygiene: client connections that keep the proxy's resources without
using them are closed, as Envoy's ``request_headers_timeout`` and ``idle_timeout`` do.

One timer per sidecar checks every client connection a few times per shortest timeout;
the request path itself only counts (a request begun, a read), so the checks cost it
nothing: no timer handle per connection or per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Set
from typing import Protocol

from sidemesh.datapath.model import ConnectionLimits

__all__ = ["Sweeper", "Watched"]

#: bounds of the check interval (seconds): a quarter of the shortest timeout in between.
MIN_INTERVAL = 0.05
MAX_INTERVAL = 1.0


class Watched(Protocol):
    """What the sweeper reads of a client connection (downstream.py)."""

    requests: int
    reads: int
    busy: bool
    closed: bool
    limits: ConnectionLimits
    #: the request whose head the sweeper saw unfinished, and since when.
    head_seen: int
    head_since: float
    #: what the sweeper saw last: (requests, reads) and since when.
    seen: tuple[int, int]
    since: float

    def reading_head(self) -> bool: ...

    def pending(self) -> bool: ...

    def expire_head(self) -> None: ...

    def close(self) -> None: ...


def check(conn: Watched, now: float) -> None:
    """Close ``conn`` (after a ``408`` for an unfinished head) when it broke a limit.

    A head's time runs from its request's start, whatever trickles in meanwhile (a byte
    every few seconds must not keep a head open); idle time runs from the last read.
    """
    if conn.reading_head():
        if conn.head_seen != conn.requests:
            conn.head_seen, conn.head_since = conn.requests, now
        elif (head := conn.limits.request_headers_timeout) is not None and (
            now - conn.head_since >= head
        ):
            conn.expire_head()
            return
    state = (conn.requests, conn.reads)
    if state != conn.seen or conn.busy or conn.pending():
        conn.seen, conn.since = state, now
    elif (idle := conn.limits.idle_timeout) is not None and now - conn.since >= idle:
        conn.close()


def interval(connections: Iterable[Watched]) -> float:
    shortest = MAX_INTERVAL * 4
    for conn in connections:
        limits = conn.limits
        for timeout in (limits.request_headers_timeout, limits.idle_timeout):
            if timeout is not None and timeout < shortest:
                shortest = timeout
    return min(MAX_INTERVAL, max(MIN_INTERVAL, shortest / 4))


class Sweeper:
    """Checks a sidecar's client connections while there are any."""

    def __init__(self, connections: Set[Watched]) -> None:
        self.connections = connections
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the checks run (called for each new connection)."""
        if self._handle is None:
            self._handle = loop.call_later(interval(self.connections), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = time.monotonic()
        for conn in list(self.connections):
            if not conn.closed:
                check(conn, now)
        if self.connections:
            self._handle = loop.call_later(interval(self.connections), self._sweep, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
