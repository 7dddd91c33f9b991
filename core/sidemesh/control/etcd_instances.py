"""The service registry in etcd: ``PREFIX/instances/<service>/<id>``, each key attached
to an etcd lease of the instance's TTL, so an instance that stops heartbeating is
removed by etcd itself (as Kubernetes' and Consul-on-etcd registries do); a heartbeat
refreshes the lease (``LeaseKeepAlive``), a deregistration revokes it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

import aetcd

from sidemesh.control.etcd_client import EtcdCluster, dumps
from sidemesh.control.store import Instance, StoreUnavailable

__all__ = ["EtcdInstances"]


def _instance(key: bytes, value: bytes) -> Instance:
    _, _, service, instance_id = key.decode().rsplit("/", 3)
    data = json.loads(value)
    return Instance(service, instance_id, data["address"], data["labels"], data["identity"],
                    data["registered_at"], data["expires_at"])


def _what(instance: Instance) -> tuple[str, str, str | None]:
    """What a watcher of the service sees (a heartbeat changes none of it)."""
    return instance.address, json.dumps(instance.labels, sort_keys=True), instance.identity


class EtcdInstances:
    """Registrations, and the change events of every replica's (followed by a watch)."""

    def __init__(self, cluster: EtcdCluster, key: Callable[..., bytes]) -> None:
        self.cluster = cluster
        self.key = key
        self._known: dict[bytes, tuple[str, str, str | None]] = {}

    @property
    def prefix(self) -> bytes:
        return self.key("instances", "")

    async def load(self) -> tuple[int, list[str]]:
        """What is registered now: the revision to watch from, and every service."""
        found = await self.cluster.call(lambda c: c.get_prefix(self.prefix))
        known = {kv.key: _instance(kv.key, kv.value) for kv in found}
        self._known = {key: _what(i) for key, i in known.items()}
        return int(found.header.revision) + 1, sorted({i.service for i in known.values()})

    def changed(self, event: aetcd.rtypes.Event) -> str | None:
        """The service whose instances changed, or ``None`` for a heartbeat."""
        key = event.kv.key
        service = key.decode().rsplit("/", 2)[1]
        if event.kind == aetcd.rtypes.EventKind.DELETE:
            return service if self._known.pop(key, None) is not None else None
        what = _what(_instance(key, event.kv.value))
        if self._known.get(key) == what:
            return None
        self._known[key] = what
        return service

    async def register(self, instance: Instance, ttl: float) -> bool:
        """Whether it is new or changed (a heartbeat of an unchanged one: ``False``)."""
        key = self.key("instances", instance.service, instance.id)
        found = await self.cluster.call(lambda c: c.get(key))
        before: dict[str, Any] = json.loads(found.value) if found is not None else {}
        lease_id = before.get("lease")
        if lease_id is not None:
            reply = await self.cluster.call(lambda c: c.refresh_lease(lease_id))
            if reply is None or int(reply.TTL) <= 0:
                lease_id = None  # expired between two heartbeats: register anew
        if lease_id is None:
            lease = await self.cluster.call(lambda c: c.lease(max(1, math.ceil(ttl))))
            lease_id = int(lease.id)
            before = {}
        now = time.time()
        value = dumps({"address": instance.address, "labels": instance.labels,
                       "identity": instance.identity, "lease": lease_id,
                       "registered_at": before.get("registered_at", now),
                       "expires_at": now + ttl})
        await self.cluster.call(lambda c: c.put(key, value, lease=lease_id))
        return (before.get("address"), before.get("labels"), before.get("identity")) != (
            instance.address, instance.labels, instance.identity)

    async def deregister(self, service: str, instance_id: str) -> bool:
        key = self.key("instances", service, instance_id)
        found = await self.cluster.call(lambda c: c.get(key))
        if found is None:
            return False
        lease_id = json.loads(found.value).get("lease")
        await self.cluster.call(lambda c: c.delete(key))
        if lease_id is not None:
            # Its key is gone already; a lease left alone would only expire later (and it
            # may have, between the two calls).
            with contextlib.suppress(StoreUnavailable):
                await self.cluster.call(lambda c: c.revoke_lease(lease_id))
        return True

    async def of(self, service: str) -> list[Instance]:
        found = await self.cluster.call(
            lambda c: c.get_prefix(self.key("instances", service, "")))
        now = time.time()
        # etcd drops an expired lease's keys within about a second; not listed meanwhile.
        live = [_instance(kv.key, kv.value) for kv in found]
        return sorted((i for i in live if i.expires_at > now), key=lambda i: i.id)
