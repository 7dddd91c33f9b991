"""Proxy status in etcd: who may use a proxy id (bound to the service that first used
it, as :mod:`sidemesh.control.proxy_ids` rules), and what each proxy last reported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from aetcd import transactions as tx

from sidemesh.control.etcd_client import ATTEMPTS, EtcdCluster, contended, dumps
from sidemesh.control.proxy_ids import (
    MAX_PROXIES_PER_SERVICE,
    PROXY_STALE_AFTER,
    ProxyIdTaken,
    RecentTouches,
    TooManyProxies,
)
from sidemesh.control.store import ProxyStatus

__all__ = ["EtcdProxies"]


def _status(value: bytes) -> ProxyStatus:
    return ProxyStatus(**json.loads(value))


class EtcdProxies:
    """``PREFIX/proxy-owner/<id>`` (its service) and ``PREFIX/proxies/<service>/<id>``."""

    def __init__(self, cluster: EtcdCluster, key: Callable[..., bytes]) -> None:
        self.cluster = cluster
        self.key = key
        self._touched = RecentTouches()

    async def _claim(self, proxy_id: str, service: str, limit: int, now: float) -> None:
        """As :func:`sidemesh.control.proxy_ids.claim`, on etcd: the owner key is created
        in a transaction, so two replicas cannot give one id to two services."""
        owner_key = self.key("proxy-owner", proxy_id)
        for _ in range(ATTEMPTS):
            owner = await self.cluster.call(lambda c: c.get(owner_key))
            if owner is not None:
                if owner.value.decode() != service:
                    raise ProxyIdTaken(proxy_id, owner.value.decode())
                return
            mine = await self.cluster.call(
                lambda c: c.get_prefix(self.key("proxies", service, "")))
            count = len(mine)
            if count >= limit:
                stale = [_status(kv.value) for kv in mine]
                stale = [s for s in stale if s.last_seen < now - PROXY_STALE_AFTER]
                for old in stale:
                    await self._forget(old)
                count -= len(stale)
            if count >= limit:
                raise TooManyProxies(service, limit)
            record = dumps(ProxyStatus(proxy_id, service, None, None, None, None, [],
                                        now).__dict__)
            if await self.cluster.txn([tx.Create(owner_key) == 0],
                               [tx.Put(owner_key, service.encode()),
                                tx.Put(self.key("proxies", service, proxy_id), record)]):
                return
        raise contended(proxy_id)

    async def _forget(self, status: ProxyStatus) -> None:
        await self.cluster.txn([], [tx.Delete(self.key("proxy-owner", status.id)),
                             tx.Delete(self.key("proxies", status.service, status.id))])
        self._touched.forget(status.id, status.service)

    async def record_status(self, status: ProxyStatus,
                            limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        await self._claim(status.id, status.service, limit, time.time())
        key = self.key("proxies", status.service, status.id)
        applied = status.applied
        if applied is None:
            before = await self.cluster.call(lambda c: c.get(key))
            applied = _status(before.value).applied if before is not None else None
        value = dumps({**status.__dict__, "applied": applied})
        await self.cluster.call(lambda c: c.put(key, value))
        self._touched.record(status.id, status.service)

    async def touch(self, proxy_id: str, service: str,
                    limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        if self._touched.recent(proxy_id, service):
            return
        wall = time.time()
        await self._claim(proxy_id, service, limit, wall)
        key = self.key("proxies", service, proxy_id)
        before = await self.cluster.call(lambda c: c.get(key))
        if before is not None:
            value = dumps({**json.loads(before.value), "last_seen": wall})
            await self.cluster.call(lambda c: c.put(key, value))
        self._touched.record(proxy_id, service)

    async def all(self) -> list[ProxyStatus]:
        found = await self.cluster.call(lambda c: c.get_prefix(self.key("proxies", "")))
        return sorted((_status(kv.value) for kv in found), key=lambda s: (s.service, s.id))
