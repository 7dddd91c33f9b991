"""``sidemesh explain``: what a config would do with one request, and why.

For every listener: each route tried in order with the reason it did not match, the
route that matched, the chain that would run (with installed plugin versions), the
cluster's candidate endpoints, and the weights of any split in the chain.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sidemesh.api.durations import format_duration
from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.messages import Headers
from sidemesh.datapath.model import ChainEntry, ClusterConfig, RouteConfig, SidecarConfig
from sidemesh.datapath.routing import CompiledMatch, strip_port

__all__ = ["ExplainError", "explain", "parse_target", "render_text"]


class ExplainError(ValueError):
    """The request given to ``explain`` cannot be understood (bad URL or header)."""


def parse_target(url: str, header_lines: Sequence[str]) -> tuple[str, str, Headers]:
    """Split ``url`` (absolute ``http://host/path`` or a ``/path``) and ``k: v`` header
    lines into (host, path with query, headers). An absolute URL's authority wins over
    a Host header, as for an HTTP/1.1 absolute-form request target."""
    items = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise ExplainError(f"header {line!r} is not 'name: value'")
        items.append((name.strip(), value.strip()))
    headers = Headers(items)
    if url.startswith(("http://", "https://")):
        parts = urlsplit(url)
        if not parts.netloc:
            raise ExplainError(f"URL {url!r} has no host")
        host = parts.netloc.rpartition("@")[2]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers.set("host", host)
    elif url.startswith("/"):
        path = url
        host = headers.get("host") or ""
    else:
        raise ExplainError(
            f"{url!r} is neither an absolute URL (http://reviews/path) nor a path (/path)"
        )
    return host, path, headers


def _why_not(match: CompiledMatch, method: str, host: str, path: str,
             headers: Headers) -> str | None:
    config = match.config
    if not match.host_ok(host.lower()):
        shown = host if config.host and strip_port(config.host) != config.host \
            else strip_port(host)
        return f"host {shown!r} != {config.host!r}" if "*" not in (config.host or "") \
            else f"host {shown!r} does not match {config.host!r}"
    if not match.path_ok(path):
        if config.prefix is not None:
            return f"path {path!r} does not start with {config.prefix!r}"
        if config.path is not None:
            return f"path {path!r} != {config.path!r}"
        return f"path {path!r} does not match regex {config.regex!r}"
    if not match.method_ok(method):
        return f"method {method} not in {', '.join(config.methods)}"
    name = match.failing_header(headers)
    if name is not None:
        rule = next(h for h in config.headers if h.name == name)
        values = headers.get_all(name)
        if rule.kind == "present":
            return f"header {name} is {'present' if values else 'missing'}"
        if not values:
            return f"header {name} is missing (wanted {rule.kind} {rule.value!r})"
        return f"header {name}: {','.join(values)!r} is not {rule.kind} {rule.value!r}"
    return None


def _endpoints(cluster: ClusterConfig, labels: dict[str, str] | None = None
               ) -> list[dict[str, Any]]:
    return [
        {"address": e.address, "labels": dict(e.labels)}
        for e in cluster.endpoints
        if labels is None or all(e.labels.get(k) == v for k, v in labels.items())
    ]


def _sticky(entry: ChainEntry, registry: PluginRegistry, headers: Headers | None
            ) -> dict[str, Any] | None:
    """Where this request's sticky key lands, asked of sidemesh-split itself (its
    ``choose`` is the data path's own choice); ``None`` for other split plugins."""
    policy = registry.get(entry.name)
    if headers is None or policy is None or policy.distribution != "sidemesh-split":
        return None
    # Imported by name: the core does not depend on the plugin, only asks it.
    sidemesh_split = importlib.import_module("sidemesh_split")
    key = sidemesh_split.sticky_key(entry.config.get("hash_on"), headers)
    if key is None:
        return {"key": None, "destination": None}
    return {"key": key, "destination": sidemesh_split.choose(entry.config, key)}


def _split(entry: ChainEntry, route: RouteConfig, config: SidecarConfig,
           sticky: dict[str, Any] | None = None) -> dict[str, Any]:
    destinations = [d for d in entry.config.get("destinations", []) if isinstance(d, dict)]
    total = sum(d.get("weight", 0) for d in destinations)
    shown = []
    for d in destinations:
        cluster_name = d.get("cluster", route.cluster)
        item: dict[str, Any] = {"cluster": cluster_name, "subset": d.get("subset"),
                                "weight": d.get("weight", 0),
                                "percent": round(100 * d.get("weight", 0) / total, 2)
                                if total else 0.0}
        try:
            cluster = config.cluster(cluster_name)
        except KeyError:
            item["endpoints"] = []
        else:
            subset = next((s for s in cluster.subsets if s.name == d.get("subset")), None)
            item["endpoints"] = _endpoints(cluster, subset.labels if subset else None)
        shown.append(item)
    return {"plugin": entry.name, "destinations": shown, "hash_on": entry.config.get("hash_on"),
            "mirror": entry.config.get("mirror"), "sticky": sticky}


def _route_detail(route: RouteConfig, config: SidecarConfig,
                  registry: PluginRegistry, headers: Headers | None = None) -> dict[str, Any]:
    chain = []
    splits = []
    for entry in route.chain:
        policy = registry.get(entry.name)
        chain.append({
            "name": entry.name,
            "scope": entry.scope,
            "version": policy.version if policy else None,
            "distribution": policy.distribution if policy else None,
            "constraint": entry.version,
            "config": entry.config,
        })
        if isinstance(entry.config.get("destinations"), list):
            sticky = _sticky(entry, registry, headers) if entry.config.get("hash_on") else None
            splits.append(_split(entry, route, config, sticky))
    cluster = config.cluster(route.cluster)
    return {
        "route": route.name,
        "cluster": route.cluster,
        "load_balancer": cluster.load_balancer,
        "timeout": route.timeout,
        "chain": chain,
        "endpoints": _endpoints(cluster),
        "subsets": {s.name: s.labels for s in cluster.subsets},
        "splits": splits,
    }


def explain(config: SidecarConfig, registry: PluginRegistry, method: str, url: str,
            header_lines: Sequence[str] = ()) -> dict[str, Any]:
    """What ``config`` does with ``METHOD URL``: a JSON-ready dictionary.

    :raises ExplainError: when the URL or a header line cannot be parsed.
    """
    host, path, headers = parse_target(url, header_lines)
    method = method.upper()
    bare_path = path.split("?", 1)[0]
    listeners = []
    for listener in config.listeners:
        tried = []
        detail = None
        for route in listener.routes:
            why = _why_not(CompiledMatch(route.match), method, host, bare_path, headers)
            tried.append({"route": route.name, "matched": why is None, "why": why or "matched"})
            if why is None:
                detail = _route_detail(route, config, registry, headers)
                break
        listeners.append({"listener": listener.name, "address": listener.address,
                          "tried": tried, "match": detail})
    return {
        "request": {"method": method, "host": host, "path": path, "headers": headers.items()},
        "listeners": listeners,
        "matched": any(item["match"] is not None for item in listeners),
    }


def _config_text(config: dict[str, Any]) -> str:
    if not config:
        return "(defaults)"
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in config.items())


def render_text(result: dict[str, Any]) -> str:
    """The human-readable form of :func:`explain`'s result."""
    req = result["request"]
    lines = [f"request: {req['method']} {req['path']}  host={req['host'] or '(none)'}"]
    for item in result["listeners"]:
        lines.append("")
        lines.append(f"listener {item['listener']} ({item['address']}):")
        for tried in item["tried"]:
            mark = "->" if tried["matched"] else "  "
            lines.append(f"  {mark} route {tried['route']}: {tried['why']}")
        detail = item["match"]
        if detail is None:
            lines.append("  no route matches: 404")
            continue
        timeout = detail["timeout"]
        lines.append(f"  cluster {detail['cluster']} ({detail['load_balancer']}), timeout "
                     f"{format_duration(timeout) if timeout else 'none'}")
        lines.append("  chain (requests in this order, responses in reverse):")
        for n, entry in enumerate(detail["chain"], 1):
            version = entry["version"] or "not installed"
            constraint = f" (requires {entry['constraint']})" if entry["constraint"] else ""
            lines.append(f"    {n}. {entry['name']} {version}{constraint} "
                         f"[{entry['scope']}]: {_config_text(entry['config'])}")
        if not detail["chain"]:
            lines.append("    (empty)")
        lines.append("  endpoints:")
        for endpoint in detail["endpoints"]:
            labels = ", ".join(f"{k}={v}" for k, v in endpoint["labels"].items())
            lines.append(f"    {endpoint['address']}" + (f"  {{{labels}}}" if labels else ""))
        for split in detail["splits"]:
            sticky = f", sticky on {split['hash_on']}" if split["hash_on"] else ""
            lines.append(f"  {split['plugin']} sends traffic{sticky}:")
            for d in split["destinations"]:
                target = f"{d['cluster']}/{d['subset']}" if d["subset"] else d["cluster"]
                addresses = ", ".join(e["address"] for e in d["endpoints"]) or "NO ENDPOINTS"
                lines.append(f"    {d['percent']:6.2f}%  {target} (weight {d['weight']}): "
                             f"{addresses}")
            sticky = split.get("sticky")
            if sticky is not None and sticky["key"] is None:
                lines.append(f"    no {split['hash_on']} in this request: random weighted choice")
            elif sticky is not None:
                d = split["destinations"][sticky["destination"]]
                where = f"subset {d['subset']}" if d["subset"] else f"cluster {d['cluster']}"
                if d["subset"] and d["cluster"] != detail["cluster"]:
                    where += f" of cluster {d['cluster']}"
                lines.append(f"    sticky key {sticky['key']!r} -> {where}")
            if split["mirror"]:
                lines.append(f"    mirror: {split['mirror']}")
    if not result["matched"]:
        lines.append("")
        lines.append("no listener has a route for this request")
    return "\n".join(lines)
