"""Stand-alone core objects for unit tests of a policy: clusters, endpoints, a policy's
context and requests, made as the core makes them, with nothing listening anywhere."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sidemesh.api.policy import ControlPlane, PolicyContext
from sidemesh.config.build import split_address
from sidemesh.datapath.cluster import Cluster, Endpoint
from sidemesh.datapath.connections import ConnectionInfo
from sidemesh.datapath.messages import Headers, Request
from sidemesh.datapath.model import ClusterConfig, EndpointConfig, SubsetConfig
from sidemesh.datapath.views import ClusterView, EndpointView

__all__ = ["make_cluster", "make_endpoint", "make_request", "policy_context"]


def _endpoint_config(address: str, labels: Mapping[str, str]) -> EndpointConfig:
    host, port = split_address(address, "127.0.0.1")
    return EndpointConfig(address, host, port, dict(labels))


def make_endpoint(
    address: str = "127.0.0.1:8080", cluster: str = "test", labels: Mapping[str, str] = {}
) -> EndpointView:
    """One endpoint of ``cluster`` at ``address``."""
    return Endpoint(cluster, _endpoint_config(address, labels))


def make_cluster(
    name: str = "test",
    endpoints: Iterable[str | tuple[str, Mapping[str, str]]] = (),
    subsets: Mapping[str, Mapping[str, str]] = {},
    load_balancer: Literal["round_robin", "least_request", "random"] = "round_robin",
) -> ClusterView:
    """A cluster as a config would make it: ``endpoints`` are addresses or
    ``(address, labels)`` pairs; ``subsets`` maps a subset name to its labels."""
    configs = tuple(
        _endpoint_config(e, {}) if isinstance(e, str) else _endpoint_config(*e) for e in endpoints
    )
    config = ClusterConfig(
        name,
        configs,
        tuple(SubsetConfig(subset, dict(labels)) for subset, labels in subsets.items()),
        load_balancer=load_balancer,
    )
    return Cluster(config)


def policy_context(
    plugin: str,
    *,
    cluster: ClusterView | None = None,
    clusters: Sequence[ClusterView] = (),
    route: str | None = "test",
    listener: str = "main",
    scope: Literal["listener", "route"] = "route",
    node: Mapping[str, Any] | None = None,
    control: ControlPlane | None = None,
) -> PolicyContext:
    """The context the core would give a policy on ``route`` of ``cluster``."""
    every = {c.name: c for c in clusters}
    if cluster is not None:
        every.setdefault(cluster.name, cluster)
    return PolicyContext(
        plugin=plugin,
        listener=listener,
        route=route,
        scope=scope,
        cluster=cluster,
        clusters=every,
        node=dict(
            node or {"service": "test", "namespace": "default", "trust_domain": "cluster.local"}
        ),
        control=control,
    )


def make_request(
    method: str = "GET",
    path: str = "/",
    host: str = "test",
    headers: Iterable[tuple[str, str]] = (),
    client: str = "127.0.0.1:40000",
    connection: ConnectionInfo | None = None,
) -> Request:
    """A request as the parser would hand it to the chain."""
    return Request(
        method, path, host, Headers(headers), connection or ConnectionInfo(client), "main"
    )
