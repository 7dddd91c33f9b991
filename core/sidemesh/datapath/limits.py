"""Cluster-wide connection accounting and the caps a policy may put on it.

Every upstream connection of a cluster, across its endpoints and pools, holds one slot of
the cluster's :class:`ConnectionLimit`. With ``max_connections`` set (Envoy's circuit
breaker of that name), a request that finds no idle connection and no free slot waits
("pending") until a connection of its endpoint is released or any slot frees up; with
``max_pending`` waiters already queued it fails at once with flag ``UO``.

The count and the queue outlive config reloads (a connection opened under one snapshot
is closed under another); the caps belong to one snapshot, so removing a policy removes
its limits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

__all__ = ["ConnectionLimit", "Handed", "PendingOverflow", "RetryLimit"]


class PendingOverflow(Exception):
    """A request found the connection limit reached and the pending queue full."""


class Handed(Protocol):
    """A connection handed from one request to a waiting one (the pool's own type)."""

    def release(self) -> None: ...


class _Waiter:
    __slots__ = ("future", "pool")

    def __init__(self, pool: object, future: asyncio.Future[Any]) -> None:
        self.pool = pool
        self.future = future


class _Shared:
    __slots__ = ("open", "waiters")

    def __init__(self) -> None:
        self.open = 0
        self.waiters: deque[_Waiter] = deque()


class ConnectionLimit:
    """Open connections of one cluster and the caps on them (``None`` means none).

    :ivar max_connections: most connections open at once across the cluster.
    :ivar max_pending: most requests waiting for a connection; one more overflows.
    :ivar overflow: the cluster's overflow counters (``max_connections`` counts requests
        that had to wait, ``max_pending_requests`` those refused), as Envoy's
        ``upstream_cx_overflow`` and ``upstream_rq_pending_overflow``.
    """

    __slots__ = ("_shared", "max_connections", "max_pending", "overflow")

    def __init__(self, overflow: dict[str, int], previous: ConnectionLimit | None = None) -> None:
        self.max_connections: int | None = None
        self.max_pending: int | None = None
        self.overflow = overflow
        self._shared: _Shared = previous._shared if previous is not None else _Shared()

    @property
    def open(self) -> int:
        return self._shared.open

    @property
    def pending(self) -> int:
        return len(self._shared.waiters)

    def reserve(self) -> bool:
        """Take a slot for a new connection; ``False`` when the cap is reached."""
        shared = self._shared
        if self.max_connections is not None and (
            shared.open >= self.max_connections or shared.waiters
        ):
            return False
        shared.open += 1
        return True

    def release(self) -> None:
        """A connection closed (or was never opened): its slot goes to the oldest waiter,
        who then opens its own connection, or back to the pool of free slots."""
        shared = self._shared
        while shared.waiters:
            waiter = shared.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
        shared.open -= 1

    def hand_over(self, pool: object, conn: Handed) -> bool:
        """Give a released connection to the oldest request waiting on ``pool``.

        :returns: ``False`` when no request waits on this pool; the caller should then
            close the connection when :attr:`pending` is not zero, so the freed slot
            reaches a request waiting on another endpoint.
        """
        for waiter in self._shared.waiters:
            if waiter.pool is pool and not waiter.future.done():
                self._shared.waiters.remove(waiter)
                waiter.future.set_result(conn)
                return True
        return False

    async def wait(self, pool: object) -> Handed | None:
        """Queue for a connection of ``pool`` or a free slot.

        :returns: a released connection of ``pool``, or ``None`` when a slot was handed
            over (the caller owns it and opens a connection).
        :raises PendingOverflow: the pending queue is full.
        """
        shared = self._shared
        if self.max_pending is not None and len(shared.waiters) >= self.max_pending:
            self.overflow["max_pending_requests"] = self.overflow.get("max_pending_requests", 0) + 1
            raise PendingOverflow("too many requests pending for a connection")
        self.overflow["max_connections"] = self.overflow.get("max_connections", 0) + 1
        waiter = _Waiter(pool, asyncio.get_running_loop().create_future())
        shared.waiters.append(waiter)
        try:
            result: Handed | None = await waiter.future
        except BaseException:
            # Timed out or cancelled: leave the queue, and pass on whatever was handed
            # over between the wake-up and the cancellation so no slot is lost.
            if waiter in shared.waiters:
                shared.waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                handed = waiter.future.result()
                if handed is None:
                    self.release()
                else:
                    handed.release()
            raise
        return result


class RetryLimit:
    """Retries in flight on one cluster and the cap on them (Envoy's ``max_retries``).

    :ivar max_active: most retries in flight at once; ``None`` means no cap.
    """

    __slots__ = ("_active", "max_active")

    def __init__(self) -> None:
        self._active = 0
        self.max_active: int | None = None

    @property
    def active(self) -> int:
        return self._active

    def begin(self) -> None:
        self._active += 1

    def end(self) -> None:
        self._active -= 1
