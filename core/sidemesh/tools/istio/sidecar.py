"""One sidecar's config from the imported mesh: its outbound routes (the hosts it may
call, with each route's chain: retry, circuit, split, mtls) and its inbound listener."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidemesh.api.spiffe import workload_id
from sidemesh.tools.istio.model import Cluster, Destination, RouteSpec, unique_name
from sidemesh.tools.istio.resources import Options, Report
from sidemesh.tools.istio.retries import default_retry
from sidemesh.tools.istio.security import Inbound
from sidemesh.tools.istio.virtual_service import HostRoutes

__all__ = ["Client", "inbound_listener", "outbound_listener"]

#: mTLS mode of a mesh service's inbound listener (None: plaintext only), by (service,
#: namespace): a client sends mTLS to the services that accept it (Istio's auto mTLS).
InboundModes = Callable[[str, str], str | None]


@dataclass
class Client:
    """The sidecar a config is written for: a service, or a gateway."""

    service: str
    namespace: str
    gateway: str | None = None
    clusters: list[Cluster] = field(default_factory=list)


def _host_order(block: HostRoutes) -> tuple[int, int, str]:
    # Envoy picks a virtual host by its most specific domain, whatever the order.
    name = block.host.name
    if name == "*":
        return (2, 0, name)
    return (1, -len(name), name) if name.startswith("*") else (0, 0, name)


def _mtls(cluster: Cluster, modes: InboundModes, options: Options,
          report: Report) -> dict[str, Any] | None:
    policy = cluster.policy
    host = cluster.host
    tls = policy.tls if policy is not None else None
    if tls == "DISABLE":
        return None
    if tls is None and (host.service is None or modes(host.service, str(host.namespace)) is None):
        return None
    expect = policy.expect if policy is not None else None
    if expect is None and host.service is None:
        assert policy is not None
        report.loss(policy.resource, "spec.trafficPolicy.tls", f"ISTIO_MUTUAL to {host.name}, "
                    "outside the mesh: no identity to expect; sent in plain HTTP")
        return None
    return {"name": "mtls", "config": {"expect": expect or workload_id(
        options.trust_domain, str(host.namespace), str(host.service))}}


def _split(spec: RouteSpec, main: Cluster) -> dict[str, Any] | None:
    def target(d: Destination) -> dict[str, Any]:
        out: dict[str, Any] = {} if d.cluster is main else {"cluster": d.cluster.name}
        if d.subset is not None:
            out["subset"] = d.subset
        return out or {"cluster": main.name}

    several = len(spec.destinations) > 1
    if not several and spec.destinations[0].subset is None and spec.mirror is None:
        return None
    config: dict[str, Any] = {"destinations": [
        {**target(d), "weight": d.weight} if several else target(d)
        for d in spec.destinations]}
    if spec.mirror is not None:
        mirror, percent = spec.mirror
        config["mirror"] = {**target(mirror), "percent": percent}
    return {"name": "split", "config": config}


def _chain(spec: RouteSpec, modes: InboundModes, options: Options,
           report: Report) -> list[dict[str, Any]]:
    main = spec.destinations[0].cluster
    policy = main.policy
    chain: list[dict[str, Any]] = []
    # The listener's retry entry is Istio's default policy; a route replaces it.
    if spec.retry is None:
        chain.append({"name": "retry", "enabled": False})
    else:
        retry = dict(spec.retry)
        if policy is not None and policy.retry_budget is not None:
            retry["budget"] = policy.retry_budget
        if retry != default_retry():
            chain.append({"name": "retry", "config": retry})
    if policy is not None and policy.circuit is not None:
        chain.append({"name": "circuit", "config": policy.circuit})
    split = _split(spec, main)
    if split is not None:
        chain.append(split)
    mtls = _mtls(main, modes, options, report)
    if mtls is not None:
        chain.append(mtls)
    others = {d.cluster for d in spec.destinations if d.cluster is not main}
    for other in others:
        if spec.origin is None:
            continue
        theirs = _mtls(other, modes, options, report)
        if theirs != mtls or (other.policy and other.policy.circuit) != (
                policy and policy.circuit):
            resource, path = spec.origin
            report.loss(resource, f"{path}.route", f"{other.host.name} has another mTLS or "
                        f"circuit policy than {main.host.name}: a route applies the policy of "
                        f"its first destination's host ({main.host.name}) to all of them")
    return chain


def outbound_listener(name: str, address: str, client: Client, blocks: list[HostRoutes],
                      modes: InboundModes, options: Options,
                      report: Report) -> dict[str, Any] | None:
    """The listener the client's app sends its requests to (``None`` when no route is
    for this client); the clusters its routes name are added to ``client.clusters``."""
    routes = _outbound_routes(client, blocks, modes, options, report)
    if not routes:
        return None
    return {"name": name, "address": address,
            "plugins": [{"name": "retry", "config": default_retry()}], "routes": routes}


def _outbound_routes(client: Client, blocks: list[HostRoutes], modes: InboundModes,
                     options: Options, report: Report) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    taken: set[str] = set()
    for block in sorted(blocks, key=_host_order):
        specs = [s for s in block.routes
                 if s.sources.admits(client.service, client.namespace, client.gateway)]
        if not specs:
            continue
        aliases = block.host.aliases(None if client.gateway else client.namespace, options)
        for k, alias in enumerate(aliases):
            for spec in specs:
                match = dict(spec.match) if alias == "*" else {"host": alias, **spec.match}
                route: dict[str, Any] = {
                    "name": unique_name(spec.name if k == 0 else f"{spec.name}.h{k}", taken),
                    "match": match,
                    "cluster": spec.destinations[0].cluster.name,
                    "timeout": spec.timeout,
                }
                chain = _chain(spec, modes, options, report)
                if chain:
                    route["plugins"] = chain
                routes.append(route)
                for cluster in [d.cluster for d in spec.destinations] + (
                        [spec.mirror[0].cluster] if spec.mirror else []):
                    if cluster not in client.clusters:
                        client.clusters.append(cluster)
    return routes


def inbound_listener(inbound: Inbound, options: Options) -> dict[str, Any]:
    """The listener other sidecars send this service's traffic to, in front of the app
    (cluster ``local``)."""
    plugins: list[dict[str, Any]] = []
    if inbound.mode is not None:
        config: dict[str, Any] = {"mode": inbound.mode}
        if inbound.allow is not None:
            config["allow"] = inbound.allow
        plugins.append({"name": "mtls", "config": config})
    routes: list[dict[str, Any]] = []
    for n, (match, deny) in enumerate(inbound.routes):
        last = n == len(inbound.routes) - 1
        route: dict[str, Any] = {
            "name": "local" if last else f"{'deny' if deny else 'allow'}-{n}",
            "match": match,
            "cluster": "local",
            # Istio's inbound routes have no timeout either.
            "timeout": "0s",
        }
        if deny:
            # Denied before anything is sent: Envoy's RBAC answer, 403.
            route["plugins"] = [{"name": "mtls", "config": {"allow": []}}]
        routes.append(route)
    listener: dict[str, Any] = {"name": "inbound", "address": options.inbound}
    if plugins:
        listener["plugins"] = plugins
    listener["routes"] = routes
    return listener
