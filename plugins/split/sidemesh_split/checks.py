"""Checks of a split's config that its JSON Schema cannot express: references to
clusters and subsets, and weights that send traffic somewhere.

Messages start with the path inside the plugin's ``config``
(``destinations[1].subset``): the core prefixes the chain entry's path, so users read
``listeners[0].routes[1].plugins[0].config: destinations[1].subset 'v3' ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidemesh import PolicyContext

__all__ = ["config_errors"]


def _target_errors(where: str, target: Mapping[str, Any], context: PolicyContext) -> list[str]:
    cluster_name = target.get("cluster")
    subset = target.get("subset")
    if cluster_name is None and subset is None:
        return [f"{where} names neither a subset nor a cluster; give subset, cluster or both"]
    if not context.clusters:
        # The core sections have errors of their own; references cannot be judged yet.
        return []
    if cluster_name is not None:
        cluster = context.clusters.get(cluster_name)
        if cluster is None:
            known = ", ".join(sorted(context.clusters)) or "none"
            return [f"{where}.cluster {cluster_name!r} is not a defined cluster "
                    f"(clusters: {known})"]
    else:
        cluster = context.cluster
        if cluster is None:
            # A listener-level entry serves routes of several clusters: each route's
            # instance checks its own when it is created.
            return []
    if subset is None:
        return []
    if subset not in cluster.subsets:
        known = ", ".join(sorted(cluster.subsets)) or "none"
        return [f"{where}.subset {subset!r} is not a subset of cluster {cluster.name!r} "
                f"(subsets: {known})"]
    if not cluster.subsets[subset] and cluster.endpoints:
        # A discovered cluster (`service:`) has no endpoints until they are pushed, and
        # its subsets fill as instances with their labels register.
        return [f"{where}.subset {subset!r} of cluster {cluster.name!r} selects no endpoint"]
    return []


def config_errors(config: Mapping[str, Any], context: PolicyContext) -> list[str]:
    """Every semantic problem of a split config (schema-valid, defaults filled in)."""
    errors: list[str] = []
    destinations = config.get("destinations", [])
    if destinations and sum(int(d.get("weight", 1)) for d in destinations) <= 0:
        errors.append("destinations: the weights sum to 0; give at least one destination "
                      "a weight above 0")
    for index, destination in enumerate(destinations):
        errors += _target_errors(f"destinations[{index}]", destination, context)
    mirror = config.get("mirror")
    if mirror is not None:
        errors += _target_errors("mirror", mirror, context)
    return errors
