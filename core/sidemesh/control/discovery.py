"""Service discovery: what a config's ``service:`` clusters resolve to.

A cluster may name a service instead of listing endpoints (``{name: reviews, service:
reviews}``). The watch answers a sidecar with its config and, beside it, the live
registered instances of every service its clusters name, with an ``endpoints_version``
(a digest of them): a sidecar that has the config already updates only the clusters'
endpoints (Envoy's EDS, separate from CDS/RDS).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sidemesh.control.store import Store

__all__ = ["DEFAULT_INSTANCE_TTL", "MAX_INSTANCE_TTL", "referenced_services", "resolve"]

#: Seconds an instance stays registered without a heartbeat (Consul's TTL check; with
#: etcd, its lease's TTL), unless the registration gives its own.
DEFAULT_INSTANCE_TTL = 10.0
MAX_INSTANCE_TTL = 300.0


def referenced_services(config: dict[str, Any]) -> list[str]:
    """The services the config's clusters name, each once, sorted."""
    clusters = config.get("clusters")
    named = {c["service"] for c in clusters if isinstance(c, dict)
             and isinstance(c.get("service"), str)} if isinstance(clusters, list) else set()
    return sorted(named)


async def resolve(store: Store, services: list[str]
                  ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Each service's live endpoints (``address``, ``labels``, ``id``), and their version:
    a digest, the same on every replica for the same instances."""
    endpoints: dict[str, list[dict[str, Any]]] = {}
    for service in services:
        endpoints[service] = [{"address": i.address, "labels": dict(i.labels), "id": i.id}
                              for i in await store.instances(service)]
    text = json.dumps(endpoints, sort_keys=True, separators=(",", ":"))
    return endpoints, hashlib.sha256(text.encode()).hexdigest()[:16]
