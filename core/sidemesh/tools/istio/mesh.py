"""The whole import: Istio resources in, one sidecar config per service (and one per
Gateway) out, with the report of what could not be translated."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sidemesh.tools.istio.clusters import ClusterTable, Entry, service_entry
from sidemesh.tools.istio.destination import traffic_policy
from sidemesh.tools.istio.model import Destination, RouteSpec
from sidemesh.tools.istio.resources import (
    Host,
    Options,
    Report,
    Resource,
    labels_service,
    load,
    mapping,
)
from sidemesh.tools.istio.retries import default_retry
from sidemesh.tools.istio.security import Inbound, Policies, inbound
from sidemesh.tools.istio.sidecar import Client, inbound_listener, outbound_listener
from sidemesh.tools.istio.virtual_service import HostRoutes, gateway_name, virtual_service

__all__ = ["Imported", "import_istio"]

_HTTP = {"HTTP", "HTTP2"}
T = TypeVar("T")


@dataclass
class Imported:
    """Configs by file name (without ``.yaml``), each with its service; the report."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Report = field(default_factory=Report)


def _of(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r.kind == kind]


def _guard(resource: Resource | str, report: Report, work: Callable[[], T], fallback: T,
           outcome: str = "not imported") -> T:
    """``work()``, or ``fallback`` with the resource reported when its YAML has values of
    another shape than Istio's (a string for a list, say): a report, not a traceback."""
    try:
        return work()
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        ours = isinstance(resource, Resource)
        what = "not a valid resource" if ours else "a policy that applies is not valid"
        report.loss(resource, "spec" if ours else "",
                    f"{what} ({type(exc).__name__}: {exc}): {outcome}")
        return fallback


def _selected(resources: list[Resource]) -> list[tuple[str, str]]:
    """The services (and namespaces) security policies select: workloads of the mesh."""
    found = []
    for r in resources:
        if r.kind in ("PeerAuthentication", "AuthorizationPolicy"):
            service = labels_service(mapping(r.spec.get("selector")).get("matchLabels"))
            if service is not None:
                found.append((service, r.namespace))
    return found


def _named_ports(resources: list[Resource], options: Options, clusters: ClusterTable) -> None:
    for vs in _of(resources, "VirtualService"):
        for http in vs.spec.get("http") or []:
            for route in mapping(http).get("route") or []:
                target = mapping(mapping(route).get("destination"))
                port = mapping(target.get("port")).get("number")
                if isinstance(port, int):
                    host = Host.parse(str(target.get("host", "")), vs.namespace, options)
                    clusters.named.setdefault(host.name, set()).add(port)


def _routes(resources: list[Resource], options: Options, report: Report,
            clusters: ClusterTable) -> list[HostRoutes]:
    _named_ports(resources, options, clusters)
    blocks: list[HostRoutes] = []
    owner: dict[tuple[str, frozenset[str]], Resource] = {}
    for vs in _of(resources, "VirtualService"):
        none: list[HostRoutes] = []
        for block in _guard(vs, report, partial(virtual_service, vs, options, report, clusters),
                            none):
            first = owner.setdefault((block.host.name, block.gateways), vs)
            if first is not vs:
                report.loss(vs, "spec.hosts", f"{block.host.name} already has VirtualService "
                            f"{first.name}: as Istio, the first one's routes are used")
                continue
            blocks.append(block)
    # A host without a VirtualService still gets Istio's default route: all of it, to
    # the host, with the default retries and no timeout.
    routed = {b.host.name for b in blocks if "mesh" in b.gateways}
    hosts = [c.host for c in clusters.clusters.values()]
    hosts += [Host.parse(str(dr.spec.get("host", "")), dr.namespace, options)
              for dr in _of(resources, "DestinationRule")]
    hosts += [entry.host for entry in clusters.entries.values()]
    hosts += [Host.parse(service, namespace, options) for service, namespace in
              _selected(resources)]
    for host in hosts:
        if host.name in routed or "*" in host.name or not (
                host.mesh or host.name in clusters.entries):
            continue
        routed.add(host.name)
        default = RouteSpec(host.short(options.namespace), {},
                            [Destination(clusters.get(host))], retry=default_retry())
        blocks.append(HostRoutes(host, [default]))
    return blocks


def _services(resources: list[Resource], blocks: list[HostRoutes], clusters: ClusterTable,
              options: Options) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    hosts = [b.host for b in blocks] + [c.host for c in clusters.clusters.values()]
    for host in hosts:
        if host.service is not None and host.name not in clusters.entries:
            found[(host.service, str(host.namespace))] = None
    found.update(dict.fromkeys(_selected(resources)))
    for name in options.services:
        service, _, namespace = name.partition(".")
        found[(service, namespace or options.namespace)] = None
    return sorted(found)


def _gateway_listeners(gw: Resource, blocks: list[HostRoutes], modes: Any, client: Client,
                       options: Options, report: Report) -> list[dict[str, Any]]:
    hosts: dict[int, list[str]] = {}
    for i, server in enumerate(gw.spec.get("servers") or []):
        port = mapping(server.get("port"))
        protocol = str(port.get("protocol", "")).upper()
        if protocol not in _HTTP or server.get("tls") or not isinstance(port.get("number"), int):
            report.loss(gw, f"spec.servers[{i}]", f"{protocol or 'no protocol'} server: "
                        "sidemesh gateways serve plain HTTP only")
            continue
        # Servers on one port share its listener.
        hosts.setdefault(port["number"], []).extend(
            str(h).split("/")[-1] for h in server.get("hosts") or ["*"])
        report.unknown(gw, f"spec.servers[{i}]", server, ("port", "hosts", "tls", "name"))
    report.unknown(gw, "spec", gw.spec, ("selector", "servers"))
    listeners = []
    address = options.inbound.rsplit(":", 1)[0]
    for number, wanted in hosts.items():
        served = [b for b in blocks if "*" in wanted or b.host.name in wanted]
        listener = outbound_listener(f"http-{number}", f"{address}:{number}", client, served,
                                     modes, options, report)
        if listener is not None:
            listeners.append(listener)
    return listeners


def _config(service: str, namespace: str, listeners: list[dict[str, Any]], client: Client,
            options: Options, app: str | None) -> dict[str, Any]:
    clusters = [c.to_config() for c in client.clusters]
    if app is not None:
        clusters.insert(0, {"name": "local", "connect_timeout": "10s",
                            "endpoints": [{"address": app}]})
    config: dict[str, Any] = {"node": {"service": service, "namespace": namespace,
                                       "trust_domain": options.trust_domain}}
    if options.admin is not None:
        config["admin"] = options.admin
    config["clusters"] = clusters
    config["listeners"] = listeners
    return config


def _file(service: str, namespace: str, options: Options) -> str:
    return service if namespace == options.namespace else f"{service}.{namespace}"


def import_istio(paths: Iterable[str], options: Options) -> Imported:
    """Read the files and translate every resource; nothing is written."""
    result = Imported()
    report = result.report
    resources = load(paths, options, report)
    clusters = ClusterTable(options, report)
    for dr in _of(resources, "DestinationRule"):
        if not isinstance(dr.spec.get("host"), str) or not dr.spec["host"]:
            report.loss(dr, "spec", "no host: the rule applies to nothing")
            continue
        policy = _guard(dr, report, partial(traffic_policy, dr, report), None)
        if policy is not None:
            clusters.add_policy(Host.parse(dr.spec["host"], dr.namespace, options), policy)
    for se in _of(resources, "ServiceEntry"):
        no_entries: list[Entry] = []
        for entry in _guard(se, report, partial(service_entry, se, options, report),
                            no_entries):
            clusters.add_entry(entry)
    blocks = _routes(resources, options, report, clusters)
    clusters.unused_wildcards()
    clusters.finish()
    services = _services(resources, blocks, clusters, options)
    policies = Policies(_of(resources, "PeerAuthentication"),
                        _of(resources, "AuthorizationPolicy"))
    # A policy that cannot be read denies everything rather than nothing.
    closed = Inbound("permissive", None, [({"prefix": "/"}, True)])
    inbounds: dict[tuple[str, str], Inbound] = {
        key: _guard(f"service {key[0]}", report,
                    partial(inbound, key[0], key[1], policies, options, report), closed,
                    "every request is denied")
        for key in services}

    def modes(service: str, namespace: str) -> str | None:
        found = inbounds.get((service, namespace))
        return found.mode if found is not None else None

    for service, namespace in services:
        client = Client(service, namespace)
        listeners = [inbound_listener(inbounds[(service, namespace)], options)]
        outbound = outbound_listener("outbound", options.outbound, client, blocks, modes,
                                     options, report)
        if outbound is not None:
            listeners.append(outbound)
        app = options.apps.get(service, options.app)
        result.configs[_file(service, namespace, options)] = _config(
            service, namespace, listeners, client, options, app)
    for gw in _of(resources, "Gateway"):
        client = Client(gw.name, gw.namespace, gateway_name(gw.name, gw.namespace))
        listeners = _guard(gw, report, partial(_gateway_listeners, gw, blocks, modes, client,
                                               options, report), [])
        if not listeners:
            report.loss(gw, "spec.servers", "no VirtualService routes HTTP through this "
                        "gateway: no config is written for it")
            continue
        result.configs[_file(gw.name, gw.namespace, options)] = _config(
            gw.name, gw.namespace, listeners, client, options, None)
    imported = {gateway_name(g.name, g.namespace) for g in _of(resources, "Gateway")}
    for block in blocks:
        if block.resource is not None and not block.gateways & (imported | {"mesh"}):
            report.loss(block.resource, "spec.gateways", "names no imported Gateway and not "
                        "mesh: its routes are in no config (import the Gateway with it)")
    return result
