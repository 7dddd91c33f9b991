"""``sidemesh proxy-status``: istioctl proxy-status from ``GET /v1/proxies`` and each
service's latest version."""

from __future__ import annotations

import argparse
import time
from typing import Any

from sidemesh.control.client import ControlClient
from sidemesh.tools.ops.common import age, control_client, print_json, print_table, run

__all__ = ["main", "proxy_rows"]

HEADERS = ("NAME", "SERVICE", "STATE", "VERSION", "APPLIED", "LATEST", "SYNCED", "LAST SEEN")


def _latest(client: ControlClient, services: set[str]) -> dict[str, int | None]:
    heads: dict[str, int | None] = {}
    for service in sorted(services):
        versions = client.call("GET", f"/v1/services/{service}/history")["versions"]
        heads[service] = versions[0]["version"] if versions else None
    return heads


def proxy_rows(proxies: list[dict[str, Any]], heads: dict[str, int | None], now: float,
               stale_after: float) -> list[dict[str, Any]]:
    """Each proxy as listed, with its service's ``latest`` version, ``synced`` (it
    serves the latest), ``last_seen_seconds`` and ``stale``."""
    rows = []
    for proxy in proxies:
        latest = heads.get(proxy["service"])
        seen = now - proxy["last_seen"]
        rows.append({**proxy, "latest_version": latest,
                     "synced": latest is not None and proxy["applied_version"] == latest,
                     "last_seen_seconds": round(seen, 3), "stale": seen > stale_after})
    return rows


def _problem(row: dict[str, Any]) -> bool:
    # A stale id is usually a sidecar that was restarted (the new process has a new id):
    # shown, but it does not fail a rollout check.
    return not row["stale"] and (row["state"] == "NACK" or not row["synced"])


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        with control_client(args) as client:
            proxies = client.call("GET", "/v1/proxies")["proxies"]
            if args.service:
                proxies = [p for p in proxies if p["service"] == args.service]
            heads = _latest(client, {p["service"] for p in proxies})
        rows = proxy_rows(proxies, heads, time.time(), args.stale_after)
        if args.json:
            print_json({"proxies": rows})
            return 1 if any(_problem(r) for r in rows) else 0
        if not rows:
            which = f" of service {args.service}" if args.service else ""
            print(f"no proxies{which} have reported to {client.url}")
            return 0
        print_table(HEADERS, (
            (r["id"], r["service"], r["state"], r["version"], r["applied_version"],
             r["latest_version"], "SYNCED" if r["synced"] else "NOT SYNCED",
             age(r["last_seen_seconds"]) + (" STALE" if r["stale"] else ""))
            for r in rows))
        for r in rows:
            if r["state"] == "NACK":
                print(f"\n{r['id']}: NACK of version {r['version']}, serving version "
                      f"{r['applied_version'] if r['applied_version'] is not None else 'none'}:"
                      f" {r['error']}")
        return 1 if any(_problem(r) for r in rows) else 0

    return run("proxy-status", body)
