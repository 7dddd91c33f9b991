"""A validated config -> the data path's :class:`~sidemesh.datapath.snapshot.Snapshot`:
clusters, policy instances and compiled chains, route tables."""

from __future__ import annotations

from typing import Any

from sidemesh.api.chains import compile_chain
from sidemesh.api.policy import ControlPlane, PolicyContext
from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.chain import Chain
from sidemesh.datapath.cluster import Cluster
from sidemesh.datapath.model import ChainEntry, SidecarConfig
from sidemesh.datapath.routing import RouteTable
from sidemesh.datapath.snapshot import CompiledListener, CompiledRoute, Snapshot

__all__ = ["build_snapshot"]


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
    control: ControlPlane | None,
    listener_entries: tuple[ChainEntry, ...] = (),
) -> Chain:
    policies = []
    listener_configs = {e.name: e.config for e in listener_entries}
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
            control=control,
            replaces=(
                dict(listener_configs[entry.name])
                if entry.scope == "route" and entry.name in listener_configs
                else None
            ),
        )
        policies.append(policy_type.cls(dict(entry.config), context))
    return compile_chain(policies)


def build_snapshot(
    config: SidecarConfig,
    registry: PluginRegistry,
    *,
    version: str,
    source: str,
    previous: Snapshot | None = None,
    control: ControlPlane | None = None,
) -> Snapshot:
    """Compile ``config``; reuse endpoint state and shared plugin state of ``previous``.
    ``control`` is the control plane the sidecar runs under (given to every policy)."""
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
                control=control,
                listener_entries=listener.chain,
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
            control=control,
        )
        listeners[listener.name] = CompiledListener(
            listener, listener.name, RouteTable(listener.routes), routes, listener_chain
        )
    return Snapshot(version, source, config, clusters, listeners, shared)
