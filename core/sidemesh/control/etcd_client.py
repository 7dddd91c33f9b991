"""An etcd v3 cluster as the control plane talks to it: several endpoints, one in use,
the next one taken when it fails.

Each endpoint has its own :class:`aetcd.Client` (aetcd speaks to one address). A call
that fails because its member is down, unreachable, or without a leader is retried on
the next endpoint with a short back-off, until :data:`CALL_DEADLINE` has passed; then
it raises :class:`~sidemesh.control.store.StoreUnavailable` (the API answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
from aetcd import exceptions as etcd_errors

from sidemesh.control.store import StoreUnavailable

__all__ = ["ATTEMPTS", "CALL_DEADLINE", "RPC_TIMEOUT", "EtcdCluster", "contended", "dumps",
           "parse_endpoints"]

log = logging.getLogger("sidemesh.control")

T = TypeVar("T")

#: Seconds one RPC may take before its member counts as failed.
RPC_TIMEOUT = 2
#: Seconds a store call keeps trying other members before it gives up.
CALL_DEADLINE = 8.0
#: gRPC keepalive: a member that vanishes without closing its connections (a power cut,
#: a partition) is noticed within about 5 s, and its watch moves to another member.
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 3000,
    "grpc.keepalive_timeout_ms": 2000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2000,
}
#: Attempts of an optimistic transaction that keeps losing to other replicas.
ATTEMPTS = 20
#: Errors that say "this member cannot answer now": another member may.
FAILOVER_ERRORS: tuple[type[Exception], ...] = (
    etcd_errors.ConnectionFailedError,
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.InternalError,
    OSError,
)


def parse_endpoints(spec: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (the part of ``etcd://...`` after the scheme).

    :raises ValueError: naming the endpoint that is not ``host:port``.
    """
    endpoints: list[tuple[str, int]] = []
    for item in spec.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {item.strip()!r} is not host:port")
        endpoints.append((host, int(port)))
    return endpoints


def dumps(value: Any) -> bytes:
    """A value as stored: compact, sorted JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def contended(name: str) -> StoreUnavailable:
    """What a write that lost :data:`ATTEMPTS` times to other replicas raises."""
    return StoreUnavailable(f"{name}: too many concurrent writes from other replicas; "
                            "try again")


def _full(exc: Exception) -> bool:
    # etcd's NOSPACE alarm: every write is refused until an operator compacts, defrags
    # and disarms (docs/operations.md).
    return "database space exceeded" in str(exc)


class EtcdCluster:
    """The members of one etcd cluster, with fail-over between them."""

    def __init__(self, endpoints: list[tuple[str, int]]) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = endpoints
        self._clients = [aetcd.Client(host=h, port=p, timeout=RPC_TIMEOUT,
                                      options=dict(_CHANNEL_OPTIONS)) for h, p in endpoints]
        self._current = 0

    @property
    def name(self) -> str:
        return ",".join(_show(e) for e in self.endpoints)

    @property
    def client(self) -> aetcd.Client:
        """The member in use."""
        return self._clients[self._current]

    def fail_over(self, failed: aetcd.Client, error: Exception) -> None:
        """Move on from ``failed`` (unless another caller already has)."""
        if self._clients[self._current] is failed and len(self._clients) > 1:
            was = self._current
            self._current = (was + 1) % len(self._clients)
            log.warning("etcd member %s failed (%s): using %s", _show(self.endpoints[was]),
                        str(error) or type(error).__name__, _show(self.endpoints[self._current]))

    async def call(self, operation: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run ``operation`` on a member, failing over as needed.

        :raises StoreUnavailable: when no member could run it within :data:`CALL_DEADLINE`,
            or etcd refused it (``full`` when etcd's space quota is exceeded).
        """
        deadline = time.monotonic() + CALL_DEADLINE
        delay = 0.05
        while True:
            client = self.client
            try:
                return await operation(client)
            except FAILOVER_ERRORS as exc:
                self.fail_over(client, exc)
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"etcd {self.name} unavailable: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except etcd_errors.ClientError as exc:
                raise StoreUnavailable(f"etcd {self.name} refused: {exc}", _full(exc)) from exc

    async def txn(self, compare: list[Any], success: list[Any]) -> bool:
        """One transaction: ``success`` applied when every ``compare`` holds."""
        ok, _ = await self.call(
            lambda c: c.transaction(compare=compare, success=success, failure=[]))
        return bool(ok)

    async def close(self) -> None:
        for client in self._clients:
            # Bounded: a client whose member is gone may wait on its streams.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)


def _show(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
