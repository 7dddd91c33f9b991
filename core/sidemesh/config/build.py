"""From a validated document to the typed :class:`~sidemesh.datapath.model.SidecarConfig`.

Defaults come from the schemas (core and plugins) so they are written down once, where
``sidemesh schema`` shows them.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sidemesh.api.durations import parse_duration
from sidemesh.datapath.model import (
    AccessLogConfig,
    ChainEntry,
    ClusterConfig,
    ConnectionLimits,
    ControlConfig,
    EndpointConfig,
    HeaderMatch,
    Http2Settings,
    ListenerConfig,
    NodeConfig,
    PathNormalization,
    RouteConfig,
    RouteMatch,
    SidecarConfig,
    SubsetConfig,
    TelemetryConfig,
)

__all__ = [
    "build_cluster",
    "build_sidecar",
    "control_urls",
    "destination",
    "effective_chain",
    "fill_defaults",
    "inherit_configs",
    "node_dict",
    "split_address",
]

Scope = Literal["listener", "route"]


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    # Only local references ("#/$defs/x"): plugin and core schemas are self-contained.
    seen = 0
    while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/") and seen < 32:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **merged}
        seen += 1
    return schema


def fill_defaults(
    instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> Any:
    """Return a copy of ``instance`` with the schema's ``default`` values filled in,
    recursively: into present objects, into defaults themselves, and into list items."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    result = copy.deepcopy(instance)
    if isinstance(result, dict):
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            sub_resolved = _resolve(sub, root)
            if key not in result and "default" in sub_resolved:
                result[key] = copy.deepcopy(sub_resolved["default"])
            if key in result:
                result[key] = fill_defaults(result[key], sub_resolved, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in result:
                if key not in properties:
                    result[key] = fill_defaults(result[key], extra, root)
        for part in schema.get("allOf", []):
            result = fill_defaults(result, part, root)
    elif isinstance(result, list) and isinstance(schema.get("items"), dict):
        result = [fill_defaults(item, schema["items"], root) for item in result]
    return result


def split_address(address: str, default_host: str = "") -> tuple[str, int]:
    """``"127.0.0.1:80"`` -> ``("127.0.0.1", 80)``; ``"[::1]:80"`` -> ``("::1", 80)``;
    ``":80"`` -> ``(default_host, 80)``."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or default_host, int(port)


def destination(text: str) -> str:
    """A route's ``match.destination`` as original destinations are written: the address
    in its short form, IPv6 in brackets, and ``:port`` if it had one.

    :raises ValueError: when the host is not an IP address or the port is out of range.
    """
    host, port = text, ""
    if text.count(":") == 1 or (text.startswith("[") and "]:" in text):
        host, _, port = text.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    shown = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"{shown}:{int(port)}" if port else shown


# One URL of several: the schema's `control.url` item pattern (no commas inside).
_CONTROL_URL = re.compile(r"^https?://[^\s/,]+(/[^\s,]*)?$")


def control_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The control-plane replicas of ``--control`` or ``control.url``, in the order a
    sidecar tries them: one URL, several separated by commas, or a list; without a
    trailing ``/``.

    :raises ValueError: naming the item that is empty, not an ``http://`` or
        ``https://`` URL, or given twice.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("no control-plane URL given")
    urls: list[str] = []
    for position, raw in enumerate(items, 1):
        item = raw.strip() if isinstance(raw, str) else ""
        if not item:
            where = f" (item {position} of {len(items)})" if len(items) > 1 else ""
            raise ValueError(f"empty control-plane URL{where}: separate URLs with one comma")
        if _CONTROL_URL.match(item) is None:
            raise ValueError(f"{item!r} is not an http:// or https:// URL")
        url = item.rstrip("/")
        if url in urls:
            raise ValueError(f"{url!r} is given twice")
        urls.append(url)
    return tuple(urls)


def _optional_seconds(duration: str) -> float | None:
    seconds = parse_duration(duration)
    return seconds if seconds > 0 else None


def node_dict(node: NodeConfig) -> dict[str, Any]:
    """The ``node`` mapping policies receive in their context."""
    return {
        "service": node.service,
        "namespace": node.namespace,
        "trust_domain": node.trust_domain,
        "spiffe_id": node.spiffe_id,
    }


def build_cluster(doc: Mapping[str, Any]) -> ClusterConfig:
    endpoints = []
    # A `service:` cluster has none until the control plane's endpoints are set.
    for item in doc.get("endpoints", ()):
        host, port = split_address(item["address"])
        endpoints.append(EndpointConfig(item["address"], host, port, dict(item["labels"])))
    return ClusterConfig(
        name=doc["name"],
        endpoints=tuple(endpoints),
        subsets=tuple(SubsetConfig(s["name"], dict(s["labels"])) for s in doc["subsets"]),
        connect_timeout=parse_duration(doc["connect_timeout"]),
        load_balancer=doc["load_balancer"],
        protocol=doc["protocol"],
    )


def _entry(doc: Mapping[str, Any], scope: Scope) -> ChainEntry:
    return ChainEntry(
        name=doc["name"],
        config=dict(doc["config"]),
        scope=scope,
        version=doc.get("version"),
        enabled=doc["enabled"],
    )


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def inherit_configs(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` where a route entry without ``config`` that overrides a listener
    entry takes that entry's config, so ``{name: x, version: ...}`` on a route only adds
    a constraint instead of resetting the config to defaults."""
    result = copy.deepcopy(dict(doc))
    for listener in _dicts(result.get("listeners")):
        configs = {
            e["name"]: e["config"]
            for e in _dicts(listener.get("plugins"))
            if isinstance(e.get("name"), str) and "config" in e
        }
        for route in _dicts(listener.get("routes")):
            for entry in _dicts(route.get("plugins")):
                name = entry.get("name")
                if "config" not in entry and isinstance(name, str) and name in configs:
                    entry["config"] = copy.deepcopy(configs[name])
    return result


def effective_chain(
    listener_entries: list[dict[str, Any]], route_entries: list[dict[str, Any]]
) -> tuple[ChainEntry, ...]:
    """The chain a route runs: the listener's entries first, each replaced by a route
    entry of the same name (in the listener's position), then the route's other entries
    in order; disabled entries are dropped."""
    by_name = {entry["name"]: entry for entry in route_entries}
    chain: list[ChainEntry] = []
    for entry in listener_entries:
        override = by_name.get(entry["name"])
        if override is None:
            chain.append(_entry(entry, "listener"))
        else:
            chain.append(_entry(override, "route"))
    inherited = {entry["name"] for entry in listener_entries}
    chain.extend(_entry(e, "route") for e in route_entries if e["name"] not in inherited)
    return tuple(e for e in chain if e.enabled)


def _match(doc: Mapping[str, Any]) -> RouteMatch:
    headers = []
    for name, rule in doc["headers"].items():
        ((kind, value),) = rule.items()
        headers.append(HeaderMatch(name.lower(), kind, value))
    return RouteMatch(
        host=doc.get("host"),
        prefix=doc.get("prefix"),
        path=doc.get("path"),
        regex=doc.get("regex"),
        headers=tuple(headers),
        methods=tuple(doc.get("methods", ())),
        destination=destination(doc["destination"]) if "destination" in doc else None,
        destination_port=doc.get("destination_port"),
    )


def build_sidecar(doc: Mapping[str, Any], raw: dict[str, Any]) -> SidecarConfig:
    """Build the typed config from a schema-valid document whose defaults (core and
    plugin) are filled in, after :func:`inherit_configs`."""
    node = NodeConfig(**doc["node"])
    listeners = []
    for listener in doc["listeners"]:
        routes = []
        for route in listener["routes"]:
            timeout = parse_duration(route["timeout"])
            routes.append(
                RouteConfig(
                    name=route["name"],
                    match=_match(route["match"]),
                    cluster=route["cluster"],
                    timeout=timeout if timeout > 0 else None,
                    chain=effective_chain(listener["plugins"], route["plugins"]),
                    upgrades=frozenset(u.lower() for u in route["upgrades"]),
                )
            )
        host, port = split_address(listener["address"])
        listeners.append(
            ListenerConfig(
                name=listener["name"],
                address=listener["address"],
                host=host,
                port=port,
                routes=tuple(routes),
                chain=tuple(
                    _entry(e, "listener") for e in listener["plugins"] if e["enabled"]
                ),
                paths=PathNormalization(**listener["path_normalization"]),
                limits=ConnectionLimits(
                    request_headers_timeout=_optional_seconds(listener["request_headers_timeout"]),
                    idle_timeout=_optional_seconds(listener["idle_timeout"]),
                    max_connections=listener["max_connections"],
                    max_requests_per_connection=listener["max_requests_per_connection"],
                ),
                use_original_dst=listener["use_original_dst"],
                http2=Http2Settings(**listener["http2"]),
            )
        )
    control = doc.get("control")
    return SidecarConfig(
        node=node,
        clusters=tuple(build_cluster(c) for c in doc["clusters"]),
        listeners=tuple(listeners),
        admin=doc.get("admin"),
        control=(
            # Several replicas as one comma-separated string: the compiled data path's
            # model stays as it is; control_urls() splits it again.
            ControlConfig(",".join(control_urls(control["url"])), control.get("token_file"),
                          control.get("ca_file"))
            if control
            else None
        ),
        telemetry=TelemetryConfig(
            metrics=doc["telemetry"]["metrics"],
            inbound_listeners=tuple(doc["telemetry"]["inbound_listeners"]),
        ),
        access_log=AccessLogConfig(
            doc["access_log"]["format"], doc["access_log"]["json_format"]
        ),
        raw=raw,
    )
