"""``sidemesh proxy-config``: a running sidecar's clusters, endpoints, listeners,
routes and config, from its admin API (istioctl proxy-config); and that config for
``sidemesh explain --admin``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import build
from sidemesh.datapath.model import SidecarConfig
from sidemesh.tools.explain import ExplainError
from sidemesh.tools.ops.common import (
    CommandError,
    admin_get,
    admin_url,
    print_json,
    print_table,
    run,
)

__all__ = ["live_config", "main"]


def _dump(url: str) -> dict[str, Any]:
    dump: dict[str, Any] = admin_get(url, "/config_dump")
    if dump.get("config") is None:
        raise CommandError(f"the sidecar at {url} has applied no config yet")
    return dump


def live_config(url: str, registry: PluginRegistry) -> SidecarConfig:
    """The config a running sidecar applied, typed as ``explain`` needs it.

    :raises ExplainError: when its admin API does not give one.
    :raises ConfigInvalid: when the plugins installed here do not accept it.
    """
    try:
        dump = _dump(url if "://" in url else f"http://{url}")
    except CommandError as exc:
        raise ExplainError(str(exc)) from None
    print(f"sidemesh explain: config {dump['version']} from {dump['source']}, applied by "
          f"the sidecar at {url}", file=sys.stderr)
    return build(dump["config"], registry)


def _plugins(chain: list[dict[str, Any]] | None) -> str:
    names = [e["name"] + ("" if e.get("enabled", True) else " (off)") for e in chain or []]
    return ",".join(names) or "-"


def _match(match: dict[str, Any]) -> str:
    parts = [f"{key} {match[key]}" for key in ("prefix", "path", "regex") if key in match]
    if match.get("methods"):
        parts.append("methods " + ",".join(match["methods"]))
    for name, rule in (match.get("headers") or {}).items():
        (kind, value), = rule.items()
        parts.append(f"header {name} {kind} {value}".rstrip())
    return "; ".join(parts) or "any"


def _clusters(url: str, as_json: bool) -> None:
    answer = admin_get(url, "/clusters")
    if as_json:
        print_json(answer)
        return
    clusters = answer["clusters"]
    print_table(("NAME", "LOAD BALANCER", "ENDPOINTS", "HEALTHY", "EJECTED", "SUBSETS",
                 "ACTIVE", "PENDING", "CONNECTIONS"), (
        (c["name"], c["load_balancer"], len(c["endpoints"]),
         sum(1 for e in c["endpoints"] if e["healthy"] and not e["ejected"]),
         sum(1 for e in c["endpoints"] if e["ejected"]), ",".join(c["subsets"]) or "-",
         c["active_requests"], c["pending_requests"], c["connections"])
        for c in clusters))


def _endpoints(url: str, as_json: bool) -> None:
    clusters = admin_get(url, "/clusters")["clusters"]
    rows = [{"cluster": c["name"], **e} for c in clusters for e in c["endpoints"]]
    if as_json:
        print_json(rows)
        return
    print_table(("ENDPOINT", "CLUSTER", "LABELS", "STATUS", "EJECTIONS", "ACTIVE",
                 "CONNECTIONS"), (
        (r["address"], r["cluster"], ",".join(f"{k}={v}" for k, v in r["labels"].items()),
         f"EJECTED {r['ejection_seconds_left']:g}s" if r["ejected"]
         else "HEALTHY" if r["healthy"] else "UNHEALTHY",
         r["ejection_count"], r["active_requests"], r["connections"])
        for r in rows))


def _listeners(url: str, as_json: bool) -> None:
    listeners = _dump(url)["config"]["listeners"]
    if as_json:
        print_json(listeners)
        return
    print_table(("NAME", "ADDRESS", "ROUTES", "PLUGINS"), (
        (item["name"], item["address"], len(item.get("routes", [])),
         _plugins(item.get("plugins")))
        for item in listeners))


def _routes(url: str, as_json: bool) -> None:
    rows = [{"listener": item["name"], **route}
            for item in _dump(url)["config"]["listeners"] for route in item.get("routes", [])]
    if as_json:
        print_json(rows)
        return
    print_table(("LISTENER", "ROUTE", "HOST", "MATCH", "CLUSTER", "TIMEOUT", "PLUGINS"), (
        (r["listener"], r["name"], r.get("match", {}).get("host", "*"),
         _match(r.get("match", {})), r["cluster"], r.get("timeout", "default"),
         _plugins(r.get("plugins")))
        for r in rows))


def _config(url: str, output: str) -> None:
    dump = _dump(url)
    if output == "json":
        print_json(dump)
        return
    print(f"# config {dump['version']} from {dump['source']}, applied by the sidecar at {url}")
    sys.stdout.write(yaml.safe_dump(dump["config"], sort_keys=False))


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        url = admin_url(args)
        if args.part == "config":
            _config(url, "json" if args.json else args.output)
        else:
            show = {"clusters": _clusters, "endpoints": _endpoints, "listeners": _listeners,
                    "routes": _routes}[args.part]
            show(url, args.json)
        return 0

    return run(f"proxy-config {args.part}", body)
