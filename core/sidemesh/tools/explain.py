"""``sidemesh explain``: what a config would do with one request, and why.

For every listener: each route tried in order with the reason it did not match, the
route that matched, the chain that would run (with installed plugin versions), what
each policy of it says it would do (its :meth:`~sidemesh.api.policy.Policy.explain`
hook), and the cluster's candidate endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sidemesh.api.durations import format_duration
from sidemesh.api.policy import Explanation, Policy, PolicyContext
from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.cluster import Cluster
from sidemesh.datapath.connections import ConnectionInfo
from sidemesh.datapath.messages import Headers, Request
from sidemesh.datapath.model import ChainEntry, ClusterConfig, RouteConfig, SidecarConfig
from sidemesh.datapath.routing import CompiledMatch, strip_port
from sidemesh.datapath.views import ClusterView

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
    if config.destination is not None or config.destination_port is not None:
        # Known only from a redirected connection, never from the request alone.
        wanted = config.destination or f"port {config.destination_port}"
        return (f"matches only connections redirected to {wanted} (use_original_dst), "
                "which explain cannot know")
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


def _endpoints(cluster: ClusterConfig) -> list[dict[str, Any]]:
    return [{"address": e.address, "labels": dict(e.labels)} for e in cluster.endpoints]


class _Target:
    """The request being explained and the world the chain's policies would live in,
    made once; each policy is given a request of its own so none sees another's edits."""

    def __init__(self, config: SidecarConfig, method: str, host: str, path: str,
                 headers: Headers) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.headers = headers
        # Fresh clusters (no traffic, nothing ejected): what a newly applied config has.
        self.clusters: dict[str, ClusterView] = {c.name: Cluster(c) for c in config.clusters}
        self.node = {
            "service": config.node.service,
            "namespace": config.node.namespace,
            "trust_domain": config.node.trust_domain,
            "spiffe_id": config.node.spiffe_id,
        }

    def request(self, listener: str, route: RouteConfig) -> Request:
        # No client is connected: an unspecified address stands for it.
        request = Request(self.method, self.path, self.host, Headers(self.headers.items()),
                          ConnectionInfo("0.0.0.0:0"), listener)
        request.route = route.name
        request.cluster = route.cluster
        return request

    def context(self, entry: ChainEntry, listener: str, route: RouteConfig) -> PolicyContext:
        return PolicyContext(plugin=entry.name, listener=listener, route=route.name,
                             scope=entry.scope, cluster=self.clusters[route.cluster],
                             clusters=self.clusters, node=dict(self.node))


def _explanation(policy_cls: type[Policy], entry: ChainEntry, request: Request,
                 context: PolicyContext) -> dict[str, Any] | None:
    """What the policy says of ``request``; a policy whose hook fails (or answers
    something else than an :class:`Explanation`) costs only its own entry."""
    try:
        said: object = policy_cls.explain(dict(entry.config), request, context)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}
    if said is None:
        return None
    if not isinstance(said, Explanation):
        return {"error": f"returned {type(said).__name__}, not an Explanation or None"}
    return {"summary": said.summary, "details": [str(line) for line in said.details],
            "data": said.data}


def _route_detail(route: RouteConfig, listener: str, config: SidecarConfig,
                  registry: PluginRegistry, target: _Target) -> dict[str, Any]:
    chain = []
    for entry in route.chain:
        policy = registry.get(entry.name)
        explanation = None
        if policy is not None:
            explanation = _explanation(policy.cls, entry, target.request(listener, route),
                                       target.context(entry, listener, route))
        chain.append({
            "name": entry.name,
            "scope": entry.scope,
            "version": policy.version if policy else None,
            "distribution": policy.distribution if policy else None,
            "constraint": entry.version,
            "config": entry.config,
            "explanation": explanation,
        })
    cluster = config.cluster(route.cluster)
    return {
        "route": route.name,
        "cluster": route.cluster,
        "load_balancer": cluster.load_balancer,
        "timeout": route.timeout,
        "chain": chain,
        "endpoints": _endpoints(cluster),
        "subsets": {s.name: s.labels for s in cluster.subsets},
    }


def explain(config: SidecarConfig, registry: PluginRegistry, method: str, url: str,
            header_lines: Sequence[str] = ()) -> dict[str, Any]:
    """What ``config`` does with ``METHOD URL``: a JSON-ready dictionary.

    :raises ExplainError: when the URL or a header line cannot be parsed.
    """
    host, path, headers = parse_target(url, header_lines)
    method = method.upper()
    bare_path = path.partition("?")[0]
    target = _Target(config, method, host, path, headers)
    listeners = []
    for listener in config.listeners:
        tried = []
        detail = None
        for route in listener.routes:
            why = _why_not(CompiledMatch(route.match), method, host, bare_path, headers)
            tried.append({"route": route.name, "matched": why is None, "why": why or "matched"})
            if why is None:
                detail = _route_detail(route, listener.name, config, registry, target)
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


def _explanation_text(explanation: Mapping[str, Any] | None) -> list[str]:
    if explanation is None:
        return []
    if "error" in explanation:
        return [f"       explain failed: {explanation['error']}"]
    return [f"       {explanation['summary']}",
            *(f"         {line}" for line in explanation["details"])]


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
            lines += _explanation_text(entry["explanation"])
        if not detail["chain"]:
            lines.append("    (empty)")
        lines.append("  endpoints:")
        for endpoint in detail["endpoints"]:
            labels = ", ".join(f"{k}={v}" for k, v in endpoint["labels"].items())
            lines.append(f"    {endpoint['address']}" + (f"  {{{labels}}}" if labels else ""))
    if not result["matched"]:
        lines.append("")
        lines.append("no listener has a route for this request")
    return "\n".join(lines)
