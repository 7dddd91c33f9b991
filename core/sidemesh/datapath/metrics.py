"""Prometheus metrics of the data path (served by the admin API's ``/metrics``).

Requests are counted in sidemesh's families or, with ``telemetry: {metrics: istio}``, in
Istio's (``istio_metrics.py``); the clusters' connection and request gauges use Envoy's
names in both.

prometheus-client's ``Counter.labels(...).inc()`` takes a lock and looks the child up on
every call; at tens of thousands of requests a second that is a measurable share of the
proxy's CPU. The per-request figures are therefore plain integers in dictionaries,
turned into metric families only when ``/metrics`` is scraped (a custom collector).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidemesh._version import __version__
from sidemesh.datapath import state as compiled_state
from sidemesh.datapath.istio_metrics import IstioMetrics

if TYPE_CHECKING:
    from sidemesh.datapath.messages import Request
    from sidemesh.datapath.outcome import Outcome
    from sidemesh.datapath.snapshot import Snapshot

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_ROUTE = ["listener", "route", "cluster"]


class _RouteCounts:
    """What one (listener, route, cluster) answered: codes, latency buckets, flags."""

    __slots__ = ("buckets", "cluster", "codes", "flags", "listener", "route", "sum")

    def __init__(self, listener: str, route: str, cluster: str) -> None:
        self.listener = listener
        self.route = route
        self.cluster = cluster
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.flags: dict[str, int] = {}


class _RequestCollector(Collector):
    """Per-request counters, exposed at scrape time."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str, str], _RouteCounts] = {}
        self.attempts: dict[str, int] = {}
        self.retries: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sidemesh_requests",
            "Requests answered, by listener, route, cluster and status code.",
            labels=[*_ROUTE, "code"],
        )
        latency = HistogramMetricFamily(
            "sidemesh_request_duration_seconds",
            "Time from the request head to the end of the response.",
            labels=_ROUTE,
        )
        flags = CounterMetricFamily(
            "sidemesh_upstream_errors",
            "Requests with an Envoy response flag (UF, UT, UC, UH, UO, URX, NR ...).",
            labels=[*_ROUTE, "flag"],
        )
        for counts in list(self.routes.values()):
            labels = [counts.listener, counts.route, counts.cluster]
            for code, value in list(counts.codes.items()):
                requests.add_metric([*labels, str(code)], value)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts.buckets,
                                    strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric(labels, buckets, counts.sum)
            for flag, value in list(counts.flags.items()):
                flags.add_metric([*labels, flag], value)
        yield requests
        yield latency
        yield flags
        for name, doc, data in (
            ("sidemesh_upstream_attempts", "Attempts sent upstream (first tries and retries).",
             self.attempts),
            ("sidemesh_retries", "Attempts after the first one.", self.retries),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=["cluster"])
            for cluster, value in list(data.items()):
                family.add_metric([cluster], value)
            yield family


class _ClusterCollector(Collector):
    """The applied config's clusters as ``/clusters`` shows them, under Envoy's names."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        label = ["envoy_cluster_name"]
        connections = GaugeMetricFamily(
            "envoy_cluster_upstream_cx_active", "Open connections to the cluster.", labels=label
        )
        requests = GaugeMetricFamily(
            "envoy_cluster_upstream_rq_active", "Requests in flight to the cluster.", labels=label
        )
        pending = GaugeMetricFamily(
            "envoy_cluster_upstream_rq_pending_active",
            "Requests waiting for a connection (the cluster's max_connections reached).",
            labels=label,
        )
        snapshot = self.snapshot
        if snapshot is not None:
            for cluster in list(snapshot.clusters.values()):
                connections.add_metric([cluster.name], cluster.connections.open)
                requests.add_metric([cluster.name], cluster.active_requests)
                pending.add_metric([cluster.name], cluster.connections.pending)
        yield connections
        yield requests
        yield pending


class Metrics:
    """The core's metric families, registered once per process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._collector = _RequestCollector()
        registry.register(self._collector)
        #: the counts the last request went to.
        self._last: _RouteCounts | None = None
        self._clusters = _ClusterCollector()
        registry.register(self._clusters)
        self.istio = IstioMetrics()
        registry.register(self.istio)
        self.build_info = Gauge(
            "sidemesh_build_info",
            "1, labelled with this sidecar's sidemesh version and whether its request "
            "path runs compiled (mypyc) or interpreted.",
            ["version", "request_path"],
            registry=registry,
        )
        path = "compiled" if compiled_state().active else "interpreted"
        self.build_info.labels(__version__, path).set(1)
        self.config_version = Gauge(
            "sidemesh_config_info",
            "The applied config: 1 for the current version.",
            ["version", "source"],
            registry=registry,
        )
        self.downstream_overflow = Counter(
            "sidemesh_downstream_cx_overflow",
            "Client connections closed as they arrived because the listener had "
            "max_connections open (Envoy's downstream_cx_overflow).",
            ["listener"],
            registry=registry,
        )
        self.tls_handshake_failures = Counter(
            "sidemesh_downstream_tls_handshake_failures",
            "Client TLS handshakes on a listener that did not succeed, by reason: "
            "no_certificate, verify_failed, timeout, closed, error (Envoy's listener "
            "ssl.fail_verify_no_cert, ssl.fail_verify_error, ssl.connection_error).",
            ["listener", "reason"],
            registry=registry,
        )
        self.config_applies = Counter(
            "sidemesh_config_apply_total",
            "Config apply attempts by result (ok, rejected).",
            ["result"],
            registry=registry,
        )

    def observe(
        self,
        listener: str,
        route: str,
        cluster: str,
        status: int,
        duration: float,
        flags: Sequence[str],
        attempts: int,
    ) -> None:
        counts = self._last
        # Most requests take the route the one before took: three identity checks
        # instead of a tuple built and hashed.
        if counts is None or counts.route is not route or counts.listener is not listener \
                or counts.cluster is not cluster:
            routes = self._collector.routes
            key = (listener, route, cluster)
            found = routes.get(key)
            if found is None:
                found = routes[key] = _RouteCounts(listener, route, cluster)
            counts = self._last = found
        codes = counts.codes
        codes[status] = codes.get(status, 0) + 1
        counts.buckets[bisect_left(LATENCY_BUCKETS, duration)] += 1
        counts.sum += duration
        if flags:
            counted = counts.flags
            for flag in flags:
                counted[flag] = counted.get(flag, 0) + 1
        if attempts:
            self._attempts(cluster, attempts)

    def observe_request(self, request: Request, outcome: Outcome, duration: float) -> None:
        """Count one answered request in the families the applied config asks for."""
        if self.istio.enabled:
            self.istio.observe(request, outcome, duration)
            if request.attempts:
                self._attempts(request.cluster, request.attempts)
            return
        self.observe(
            request.listener,
            request.route,
            request.cluster,
            outcome.status,
            duration,
            outcome.flags,
            request.attempts,
        )

    def _attempts(self, cluster: str, attempts: int) -> None:
        c = self._collector
        c.attempts[cluster] = c.attempts.get(cluster, 0) + attempts
        if attempts > 1:
            c.retries[cluster] = c.retries.get(cluster, 0) + attempts - 1

    def set_config(self, version: str, source: str, snapshot: Snapshot | None = None) -> None:
        self.config_version.clear()
        self.config_version.labels(version, source).set(1)
        if snapshot is not None:
            self._clusters.snapshot = snapshot
            self.istio.configure(snapshot.config.node, snapshot.config.telemetry)
