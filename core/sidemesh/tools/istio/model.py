"""The mesh as the importer sees it between Istio and sidemesh: clusters (one per
destination host and port), the traffic policy a DestinationRule gives a host, and
routes waiting for the sidecar whose config they go into."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from sidemesh.tools.istio.resources import Host, Resource

__all__ = ["Cluster", "Destination", "RouteSpec", "Sources", "TrafficPolicy", "unique_name"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def unique_name(candidate: str, taken: set[str]) -> str:
    """``candidate`` as a sidemesh name (letters, digits, ``_.-``, at most 64, starting
    and ending with a letter or digit), made unique among ``taken`` and added to it."""
    name = _NAME_CHARS.sub("-", candidate).strip("-_.") or "x"
    if len(name) > 64:
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        name = f"{name[:55].rstrip('-_.')}-{digest}"
    base, n = name, 2
    while name in taken:
        suffix = f"-{n}"
        name = base[: 64 - len(suffix)].rstrip("-_.") + suffix
        n += 1
    taken.add(name)
    return name


@dataclass
class TrafficPolicy:
    """A DestinationRule's policy for its host, already in sidemesh's terms."""

    resource: Resource
    subsets: dict[str, dict[str, str]] = field(default_factory=dict)
    load_balancer: str | None = None
    connect_timeout: str | None = None
    #: the circuit plugin's config, or None when the rule sets no limit or detection.
    circuit: dict[str, Any] | None = None
    #: "ISTIO_MUTUAL", "DISABLE" or None (not set).
    tls: str | None = None
    #: the upstream's SPIFFE ID when the rule names one (subjectAltNames).
    expect: str | None = None
    retry_budget: dict[str, Any] | None = None
    #: the cluster's ``protocol`` (h2UpgradePolicy: UPGRADE is http2), None when unset.
    protocol: str | None = None


@dataclass(eq=False)
class Cluster:
    """One destination host on one port. ``name`` is given once every cluster is
    known (a host reached on two ports gets two clusters, named apart by port)."""

    host: Host
    port: int
    policy: TrafficPolicy | None = None
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    #: the subsets routes send to: only those are written (each must select endpoints).
    used: set[str] = field(default_factory=set)

    @property
    def subsets(self) -> dict[str, dict[str, str]]:
        return self.policy.subsets if self.policy is not None else {}

    def to_config(self) -> dict[str, Any]:
        policy = self.policy
        doc: dict[str, Any] = {
            "name": self.name,
            # Istio's defaults: meshConfig.connectTimeout 10s, LEAST_REQUEST.
            "connect_timeout": (policy and policy.connect_timeout) or "10s",
            "load_balancer": (policy and policy.load_balancer) or "least_request",
            "endpoints": self.endpoints,
        }
        if policy is not None and policy.protocol is not None:
            doc["protocol"] = policy.protocol
        if self.used:
            doc["subsets"] = [{"name": name, "labels": labels}
                              for name, labels in self.subsets.items() if name in self.used]
        return doc


@dataclass
class Destination:
    cluster: Cluster
    subset: str | None = None
    weight: int = 1


@dataclass(frozen=True)
class Sources:
    """The client sidecars a route applies to: ``None`` means any."""

    namespaces: frozenset[str] | None = None
    services: frozenset[str] | None = None
    #: gateways (by name) whose listeners get the route; ``mesh``: every sidecar.
    gateways: frozenset[str] = frozenset({"mesh"})

    def admits(self, service: str, namespace: str, gateway: str | None = None) -> bool:
        if gateway is not None:
            return gateway in self.gateways
        if "mesh" not in self.gateways:
            return False
        return (self.namespaces is None or namespace in self.namespaces) and (
            self.services is None or service in self.services)


@dataclass
class RouteSpec:
    """One sidemesh route for a host, before the host and the client are known."""

    name: str
    match: dict[str, Any]
    destinations: list[Destination]
    timeout: str = "0s"
    retry: dict[str, Any] | None = None
    mirror: tuple[Destination, float] | None = None
    sources: Sources = Sources()
    #: the resource and path reported when the route cannot honour a cluster's policy.
    origin: tuple[Resource, str] | None = None
