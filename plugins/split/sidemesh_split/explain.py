"""What a split would do with one request, for ``sidemesh explain``: each destination
with its share and endpoints, where the request's sticky key lands, and the mirror.

The sticky choice is asked of the same :class:`~sidemesh_split.choose.Weights` and
:func:`~sidemesh_split.choose.sticky_key` the request hook uses, so the explanation
cannot disagree with the data path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidemesh import Explanation, PolicyContext, Request

from .choose import Weights, sticky_key

__all__ = ["explanation"]


def _target(spec: Mapping[str, Any], route_cluster: str, context: PolicyContext
            ) -> dict[str, Any]:
    """A destination (or the mirror) as data: its cluster, subset and endpoints."""
    name = spec.get("cluster") or route_cluster
    subset = spec.get("subset")
    cluster = context.clusters.get(name)
    if cluster is None:
        endpoints = []
    else:
        endpoints = list(cluster.endpoints if subset is None else cluster.subsets.get(subset, []))
    return {"cluster": name, "subset": subset,
            "endpoints": [{"address": e.address, "labels": dict(e.labels)} for e in endpoints]}


def _label(target: Mapping[str, Any]) -> str:
    return f"{target['cluster']}/{target['subset']}" if target["subset"] else target["cluster"]


def _addresses(target: Mapping[str, Any]) -> str:
    return ", ".join(e["address"] for e in target["endpoints"]) or "NO ENDPOINTS"


def _where(target: Mapping[str, Any], route_cluster: str) -> str:
    """``subset v2``, ``subset v2 of cluster ratings`` or ``cluster ratings``."""
    if not target["subset"]:
        return f"cluster {target['cluster']}"
    where = f"subset {target['subset']}"
    if target["cluster"] != route_cluster:
        where += f" of cluster {target['cluster']}"
    return where


def explanation(config: Mapping[str, Any], request: Request, context: PolicyContext
                ) -> Explanation:
    """A split's explanation of ``request``: a line per destination (share, weight,
    endpoints), then where the sticky key lands and where the mirror goes; ``data`` holds
    the same for ``explain --json``."""
    route_cluster = context.cluster.name if context.cluster is not None else request.cluster
    weights = Weights.of(config)
    destinations = []
    details = []
    for spec in config.get("destinations", []):
        weight = int(spec.get("weight", 1))
        percent = round(100 * weight / weights.total, 2)
        target = {**_target(spec, route_cluster, context), "weight": weight, "percent": percent}
        destinations.append(target)
        details.append(f"{percent:6.2f}%  {_label(target)} (weight {weight}): "
                       f"{_addresses(target)}")

    hash_on = config.get("hash_on")
    sticky: dict[str, Any] | None = None
    summary = "sends traffic by weight"
    if hash_on:
        summary += f", sticky on {hash_on}"
        key = sticky_key(hash_on, request.headers)
        if key is None:
            sticky = {"key": None, "destination": None}
            details.append(f"no {hash_on} in this request: random weighted choice")
        else:
            index = weights.pick(key)
            sticky = {"key": key, "destination": index}
            details.append(f"sticky key {key!r} -> {_where(destinations[index], route_cluster)}")

    mirror: dict[str, Any] | None = None
    spec = config.get("mirror")
    if spec is not None:
        percent = float(spec.get("percent", 100))
        mirror = {**_target(spec, route_cluster, context), "percent": percent}
        details.append(f"mirror: {percent:g}% of requests to {_label(mirror)}: "
                       f"{_addresses(mirror)}")

    return Explanation(summary, details, {"destinations": destinations, "hash_on": hash_on,
                                          "sticky": sticky, "mirror": mirror})
