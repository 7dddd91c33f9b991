"""One applied config, compiled for the data path.

A snapshot is immutable once built; applying a config builds a new one completely
(policies instantiated, routes compiled) before swapping it in, so a config that fails
half-way is never half-applied, and in-flight requests finish on the snapshot they
started with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .chain import Chain
from .hookspecs import PolicyContext
from .routing import RouteTable
from .upstream import Cluster

if TYPE_CHECKING:
    from .model import ChainEntry, ListenerConfig, RouteConfig, SidecarConfig
    from .plugins import PluginRegistry

__all__ = ["CompiledListener", "CompiledRoute", "Snapshot", "build_snapshot"]


@dataclass
class CompiledRoute:
    config: RouteConfig
    name: str
    cluster: str
    timeout: float | None
    chain: Chain


@dataclass
class CompiledListener:
    config: ListenerConfig
    name: str
    table: RouteTable
    routes: list[CompiledRoute]
    #: the listener-scope policies, used for connection setup when the listener starts.
    chain: Chain


@dataclass
class Snapshot:
    version: str
    source: str
    config: SidecarConfig
    clusters: dict[str, Cluster]
    listeners: dict[str, CompiledListener]
    #: per (plugin, cluster) state shared by routes and kept across reloads.
    shared: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    applied_at: float = field(default_factory=time.time)
    active: int = 0

    async def close(self) -> None:
        for listener in self.listeners.values():
            await listener.chain.close()
            for route in listener.routes:
                await route.chain.close()


def _instantiate(
    entries: tuple[ChainEntry, ...],
    registry: PluginRegistry,
    *,
    listener: str,
    route: str | None,
    cluster: Cluster | None,
    clusters: dict[str, Cluster],
    node: dict[str, Any],
    shared: dict[tuple[str, str], dict[str, Any]],
) -> Chain:
    policies = []
    for entry in entries:
        policy_type = registry.get(entry.name)
        if policy_type is None:
            raise LookupError(f"plugin {entry.name!r} is not installed")
        state = shared.setdefault((entry.name, cluster.name if cluster else ""), {})
        context = PolicyContext(
            plugin=entry.name,
            listener=listener,
            route=route,
            scope=entry.scope,
            cluster=cluster,
            clusters=clusters,
            node=node,
            shared=state,
        )
        policies.append(policy_type.cls(dict(entry.config), context))
    return Chain(policies)


def build_snapshot(
    config: SidecarConfig,
    registry: PluginRegistry,
    *,
    version: str,
    source: str,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Compile ``config``; reuse endpoint state and shared plugin state of ``previous``."""
    old_clusters = previous.clusters if previous is not None else {}
    clusters = {c.name: Cluster(c, old_clusters.get(c.name)) for c in config.clusters}
    shared = previous.shared if previous is not None else {}
    node = {
        "service": config.node.service,
        "namespace": config.node.namespace,
        "trust_domain": config.node.trust_domain,
        "spiffe_id": config.node.spiffe_id,
    }
    listeners: dict[str, CompiledListener] = {}
    for listener in config.listeners:
        routes = []
        for route in listener.routes:
            chain = _instantiate(
                route.chain,
                registry,
                listener=listener.name,
                route=route.name,
                cluster=clusters[route.cluster],
                clusters=clusters,
                node=node,
                shared=shared,
            )
            routes.append(CompiledRoute(route, route.name, route.cluster, route.timeout, chain))
        listener_chain = _instantiate(
            listener.chain,
            registry,
            listener=listener.name,
            route=None,
            cluster=None,
            clusters=clusters,
            node=node,
            shared=shared,
        )
        listeners[listener.name] = CompiledListener(
            listener, listener.name, RouteTable(listener.routes), routes, listener_chain
        )
    return Snapshot(version, source, config, clusters, listeners, shared)
