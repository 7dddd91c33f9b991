"""Who may use a proxy id, and how many one service may register.

A proxy id belongs to the service that first reported or watched with it: another
service's token is refused with it (``403``), so it can neither overwrite that proxy's
ACK/NACK (hiding a bad rollout) nor keep it looking alive. The admin cannot move an id
to another service either.

A service may register :data:`MAX_PROXIES_PER_SERVICE` ids. Proxies come and go (the
default id has the process id in it), so at that limit the service's ids not seen for
:data:`PROXY_STALE_AFTER` are forgotten to make room (and are free again); when none is
that old, a new id is refused (``429``). Ids are never forgotten otherwise.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = [
    "MAX_PROXIES_PER_SERVICE",
    "PROXY_STALE_AFTER",
    "TOUCH_INTERVAL",
    "ProxyIdTaken",
    "RecentTouches",
    "TooManyProxies",
    "claim",
]

MAX_PROXIES_PER_SERVICE = 10_000
#: Seconds; a live proxy is seen at least once per long poll (25 s).
PROXY_STALE_AFTER = 3600.0
#: Seconds between two writes of one proxy's "last seen" by one control plane: every
#: long poll marks its proxy seen, and a fleet's polls should not all be store writes
#: (each one an fsync with SQLite, a raft round with etcd).
TOUCH_INTERVAL = 60.0


class ProxyIdTaken(Exception):
    """The proxy id belongs to another service."""

    def __init__(self, proxy_id: str, owner: str) -> None:
        super().__init__(f"proxy id {proxy_id!r} belongs to service {owner!r}")


class TooManyProxies(Exception):
    """The service has as many proxy ids as it may, all of them in use."""

    def __init__(self, service: str, limit: int) -> None:
        super().__init__(
            f"service {service!r} already has {limit} proxies (the limit per service), "
            f"each seen within the last {PROXY_STALE_AFTER:.0f} s: a new proxy id is "
            "accepted once one of them has not been seen for that long")


def claim(db: sqlite3.Connection, proxy_id: str, service: str, limit: int, now: float) -> None:
    """Make sure ``proxy_id`` is ``service``'s, registering it if it is new; run inside
    the write transaction that then updates its row.

    :raises ProxyIdTaken: when another service has it.
    :raises TooManyProxies: when it is new and ``service`` already has ``limit`` ids in use.
    """
    row = db.execute("SELECT service FROM proxies WHERE id = ?", (proxy_id,)).fetchone()
    if row is not None:
        if row[0] != service:
            raise ProxyIdTaken(proxy_id, row[0])
        return
    count = db.execute("SELECT COUNT(*) FROM proxies WHERE service = ?",
                       (service,)).fetchone()[0]
    if count >= limit:
        forgotten = db.execute("DELETE FROM proxies WHERE service = ? AND last_seen < ?",
                               (service, now - PROXY_STALE_AFTER)).rowcount
        count -= forgotten
    if count >= limit:
        raise TooManyProxies(service, limit)
    db.execute("INSERT INTO proxies (id, service, plugins, last_seen) VALUES (?, ?, '[]', ?)",
               (proxy_id, service, now))


class RecentTouches:
    """The (proxy id, service) pairs this process recorded as seen within
    :data:`TOUCH_INTERVAL`: such an id is its service's (it was claimed then, and an id
    is only forgotten after :data:`PROXY_STALE_AFTER`), so seeing it again needs no
    write. Another service using the id is a new pair, and is checked."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def recent(self, proxy_id: str, service: str) -> bool:
        when = self._seen.get((proxy_id, service))
        return when is not None and time.monotonic() - when < TOUCH_INTERVAL

    def record(self, proxy_id: str, service: str) -> None:
        now = time.monotonic()
        if len(self._seen) > MAX_PROXIES_PER_SERVICE:
            self._seen = {k: v for k, v in self._seen.items() if now - v < TOUCH_INTERVAL}
        self._seen[(proxy_id, service)] = now

    def forget(self, proxy_id: str, service: str) -> None:
        self._seen.pop((proxy_id, service), None)
