"""The circuit plugin's Prometheus metrics, on prometheus_client's default registry (the
one the admin ``/metrics`` endpoint serves).

Overflow counters are the clusters' own (``ClusterView.overflow``, also on ``/clusters``):
the core's connection limit and the retry policy count there too, so a collector reads
them rather than a second set of counters that could disagree.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidemesh import ClusterView

__all__ = ["EJECTIONS", "watch"]

EJECTIONS = Counter(
    "sidemesh_circuit_ejections",
    "Endpoints ejected by outlier detection, by cluster and reason "
    "(consecutive_5xx, consecutive_gateway_failure).",
    ["cluster", "reason"],
)

#: the newest Cluster object of each cluster, keyed by its overflow dictionary (one per
#: cluster for its whole life, across reloads); weak so retired snapshots go away.
_CLUSTERS: weakref.WeakValueDictionary[int, ClusterView] = weakref.WeakValueDictionary()


def watch(cluster: ClusterView) -> None:
    """Export ``cluster``'s overflow counters and ejected endpoints."""
    _CLUSTERS[id(cluster.overflow)] = cluster


class _ClusterCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        overflow = CounterMetricFamily(
            "sidemesh_circuit_overflow",
            "Requests that hit a cluster limit: max_requests, max_pending_requests "
            "(both answered 503 UO), max_connections (had to wait for a connection), "
            "max_retries and retry_budget (retry not made).",
            labels=["cluster", "limit"],
        )
        ejected = GaugeMetricFamily(
            "sidemesh_circuit_ejected_endpoints",
            "Endpoints ejected right now, by cluster.",
            labels=["cluster"],
        )
        totals: dict[tuple[str, str], int] = {}
        now = time.monotonic()
        ejected_now: dict[str, int] = {}
        for cluster in list(_CLUSTERS.values()):
            for limit, count in cluster.overflow.items():
                key = (cluster.name, limit)
                totals[key] = totals.get(key, 0) + count
            ejected_now[cluster.name] = ejected_now.get(cluster.name, 0) + sum(
                1 for e in cluster.endpoints if e.ejected_until > now
            )
        for (name, limit), count in sorted(totals.items()):
            overflow.add_metric([name, limit], count)
        for name, count in sorted(ejected_now.items()):
            ejected.add_metric([name], count)
        yield overflow
        yield ejected

    def describe(self) -> Iterator[Metric]:
        return iter(())


REGISTRY.register(_ClusterCollector())
