"""VirtualService -> routes per host: matches (one route per Istio match, in order),
weighted destinations and mirrors (split), retries, timeouts."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from sidemesh.tools.istio.clusters import ClusterTable
from sidemesh.tools.istio.model import Destination, RouteSpec, Sources
from sidemesh.tools.istio.resources import Host, Options, Report, Resource, duration
from sidemesh.tools.istio.retries import retry_config

__all__ = ["HostRoutes", "gateway_name", "virtual_service"]

_METHODS = re.compile(r"^\^?\(?([A-Z]+(\|[A-Z]+)*)\)?\$?$")
_NOT_FORWARDED = {
    "redirect": "sidemesh routes forward to a cluster: a redirect answer is not supported",
    "directResponse": "sidemesh routes forward to a cluster: a direct answer is not supported",
    "delegate": "sidemesh does not chain VirtualServices (delegate)",
}
_LOST = {
    "fault": "sidemesh has no fault injection: requests are forwarded unharmed",
    "rewrite": "sidemesh forwards the path and Host as received: no rewrite",
    "headers": "sidemesh routes do not change headers",
    "corsPolicy": "sidemesh has no CORS policy: preflight requests go to the upstream",
}
_KNOWN = ("name", "match", "route", "timeout", "retries", "mirror", "mirrors",
          "mirrorPercentage", "mirrorPercent", "mirror_percent", *_NOT_FORWARDED, *_LOST)


@dataclass
class HostRoutes:
    """The routes a VirtualService (or the default) gives one host, in order."""

    host: Host
    routes: list[RouteSpec]
    resource: Resource | None = None
    #: the VirtualService's gateways (``mesh``: the sidecars).
    gateways: frozenset[str] = frozenset({"mesh"})


def gateway_name(name: str, namespace: str) -> str:
    return name if name == "mesh" or "/" in name else f"{namespace}/{name}"


def _string_match(rule: Any) -> tuple[str, Any] | None:
    if not isinstance(rule, dict) or not rule:
        return None
    kind = next(iter(rule))
    return (kind, rule[kind]) if kind in ("exact", "prefix", "regex") else None


def _uri(rule: Any, ignore_case: bool) -> dict[str, str] | None:
    found = _string_match(rule)
    if found is None:
        return None
    kind, value = found
    if not ignore_case:
        return {"exact": {"path": value}, "prefix": {"prefix": value}}.get(kind, {"regex": value})
    pattern = {"exact": re.escape(value), "prefix": re.escape(value) + ".*"}.get(kind, value)
    return {"regex": f"(?i){pattern}"}


def _match(m: dict[str, Any], vs: Resource, path: str, report: Report,
           sources: Sources) -> tuple[dict[str, Any], Sources] | None:
    """A sidemesh match (without host) and the clients it is for; ``None`` when the
    match cannot be expressed (the route then leaves those requests to later rules)."""
    out: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    if "uri" in m:
        uri = _uri(m["uri"], bool(m.get("ignoreUriCase")))
        if uri is None:
            report.loss(vs, f"{path}.uri", "not an exact, prefix or regex match: match dropped")
            return None
        out.update(uri)
    if "method" in m:
        found = _string_match(m["method"])
        methods = _METHODS.match(str(found[1])) if found and found[0] != "prefix" else None
        if methods is None:
            report.loss(vs, f"{path}.method", "sidemesh matches a list of methods: match dropped")
            return None
        out["methods"] = sorted(set(methods.group(1).split("|")))
    if "authority" in m:
        found = _string_match(m["authority"])
        if found is None:
            report.loss(vs, f"{path}.authority", "not an exact, prefix or regex match: "
                        "match dropped")
            return None
        headers["host"] = {found[0]: found[1]}
    for name, rule in (m.get("headers") or {}).items():
        found = _string_match(rule)
        if name.startswith(":"):
            report.loss(vs, f"{path}.headers.{name}", "pseudo-headers are not matched: "
                        "match dropped")
            return None
        headers[name.lower()] = {found[0]: found[1]} if found else {"present": True}
    for name, rule in (m.get("withoutHeaders") or {}).items():
        if _string_match(rule) is not None:
            report.loss(vs, f"{path}.withoutHeaders.{name}", "sidemesh matches a header's "
                        "absence, not a value it must not have: match dropped")
            return None
        headers[name.lower()] = {"present": False}
    if headers:
        out["headers"] = headers
    if "scheme" in m and _string_match(m["scheme"]) != ("exact", "http"):
        report.loss(vs, f"{path}.scheme", "apps send plain HTTP to the sidecar: match dropped")
        return None
    if "queryParams" in m:
        report.loss(vs, f"{path}.queryParams", "sidemesh does not match query parameters: "
                    "match dropped")
        return None
    if "port" in m:
        report.loss(vs, f"{path}.port", "sidemesh routes by host, not by port: the rule "
                    "applies on every port")
    labels = m.get("sourceLabels")
    if labels:
        if set(labels) != {"app"}:
            report.loss(vs, f"{path}.sourceLabels", "sidemesh tells clients apart by service "
                        "(the app label) only: match dropped")
            return None
        sources = replace(sources, services=frozenset({str(labels["app"])}))
    if "sourceNamespace" in m:
        # Within the namespaces the VirtualService is exported to.
        wanted = frozenset({str(m["sourceNamespace"])})
        sources = replace(sources, namespaces=wanted if sources.namespaces is None
                          else sources.namespaces & wanted)
    if "gateways" in m:
        sources = replace(sources, gateways=frozenset(
            gateway_name(str(g), vs.namespace) for g in m["gateways"]))
    report.unknown(vs, path, m, ("uri", "method", "authority", "headers", "withoutHeaders",
                                 "scheme", "queryParams", "port", "sourceLabels",
                                 "sourceNamespace", "gateways", "name", "ignoreUriCase",
                                 "statPrefix"))
    return out, sources


def _destination(d: Any, vs: Resource, path: str, options: Options, report: Report,
                 clusters: ClusterTable, weight: int) -> Destination | None:
    if not isinstance(d, dict) or not isinstance(d.get("host"), str):
        report.loss(vs, path, "a destination needs a host")
        return None
    host = Host.parse(d["host"], vs.namespace, options)
    port = d.get("port", {}).get("number") if isinstance(d.get("port"), dict) else None
    cluster = clusters.get(host, int(port) if port else None)
    subset = d.get("subset")
    if subset is not None and subset not in cluster.subsets:
        report.loss(vs, f"{path}.subset", f"no DestinationRule gives {host.name} a subset "
                    f"{subset!r} (Istio answers 503): sent to every endpoint of the host")
        subset = None
    if subset is not None:
        cluster.used.add(subset)
    return Destination(cluster, subset, weight)


def _mirror(http: dict[str, Any], vs: Resource, path: str, options: Options, report: Report,
            clusters: ClusterTable) -> tuple[Destination, float] | None:
    mirrors = list(http.get("mirrors") or [])
    if "mirror" in http:
        percentage = http.get("mirrorPercentage")
        value = percentage.get("value") if isinstance(percentage, dict) else http.get(
            "mirrorPercent", http.get("mirror_percent", 100))
        mirrors.insert(0, {"destination": http["mirror"], "percentage": {"value": value}})
    for i in range(1, len(mirrors)):
        report.loss(vs, f"{path}.mirrors[{i}]", "sidemesh mirrors to one destination per route")
    if not mirrors:
        return None
    first = mirrors[0]
    target = _destination(first.get("destination"), vs, f"{path}.mirror", options, report,
                          clusters, 1)
    percentage = first.get("percentage")
    value = percentage.get("value", 100) if isinstance(percentage, dict) else 100
    percent = float(value) if isinstance(value, int | float) and 0 <= value <= 100 else 100.0
    return (target, percent) if target is not None else None


def _http_route(http: dict[str, Any], i: int, vs: Resource, options: Options,
                report: Report, clusters: ClusterTable, sources: Sources) -> list[RouteSpec]:
    path = f"spec.http[{i}]"
    for key, reason in _NOT_FORWARDED.items():
        if key in http:
            report.loss(vs, f"{path}.{key}", f"{reason}: the rule is left out")
            return []
    for key, reason in _LOST.items():
        if key in http:
            report.loss(vs, f"{path}.{key}", reason)
    report.unknown(vs, path, http, _KNOWN)
    routes = http.get("route") or []
    several = len(routes) > 1
    destinations = [
        d for j, r in enumerate(routes)
        if (d := _destination(r.get("destination"), vs, f"{path}.route[{j}].destination",
                              options, report, clusters,
                              int(r.get("weight", 0 if several else 1)))) is not None]
    for j, r in enumerate(routes):
        if "headers" in r:
            report.loss(vs, f"{path}.route[{j}].headers", _LOST["headers"])
    if not destinations:
        report.loss(vs, path, "no destination: the rule is left out")
        return []
    if sum(d.weight for d in destinations) == 0:
        report.loss(vs, path, "every weight is 0: the rule is left out")
        return []
    timeout = duration(http["timeout"], vs, f"{path}.timeout", report) \
        if "timeout" in http else None
    retry = retry_config(http.get("retries"), vs, f"{path}.retries", report)
    mirror = _mirror(http, vs, path, options, report, clusters)
    base = str(http.get("name") or f"{vs.name}-{i}")
    matches = http.get("match") or [{}]
    specs = []
    for j, m in enumerate(matches):
        found = _match(m if isinstance(m, dict) else {}, vs, f"{path}.match[{j}]", report,
                       sources)
        if found is None:
            continue
        match, narrowed = found
        name = base if len(matches) == 1 else f"{base}-{m.get('name') or j}"
        specs.append(RouteSpec(name, match, destinations, timeout or "0s", retry, mirror,
                               narrowed, (vs, path)))
    return specs


def virtual_service(vs: Resource, options: Options, report: Report,
                    clusters: ClusterTable) -> list[HostRoutes]:
    spec = vs.spec
    hosts = [Host.parse(str(h), vs.namespace, options) for h in spec.get("hosts") or []]
    if not hosts:
        report.loss(vs, "spec", "no hosts (a delegate VirtualService): sidemesh does not "
                    "chain VirtualServices")
        return []
    export = spec.get("exportTo")
    namespaces = None if not export or "*" in export else frozenset(
        vs.namespace if n == "." else str(n) for n in export)
    gateways = frozenset(gateway_name(str(g), vs.namespace)
                         for g in spec.get("gateways") or ["mesh"])
    sources = Sources(namespaces, None, gateways)
    routes: list[RouteSpec] = []
    for i, http in enumerate(spec.get("http") or []):
        if isinstance(http, dict):
            routes += _http_route(http, i, vs, options, report, clusters, sources)
    for key in ("tcp", "tls"):
        for i, _ in enumerate(spec.get(key) or []):
            report.loss(vs, f"spec.{key}[{i}]", f"sidemesh proxies HTTP only: {key} routes are "
                        "not imported")
    report.unknown(vs, "spec", spec, ("hosts", "gateways", "http", "tcp", "tls", "exportTo"))
    return [HostRoutes(host, routes, vs, gateways) for host in hosts]
