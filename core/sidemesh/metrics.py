"""Prometheus metrics of the data path (served by the admin API's ``/metrics``).

Label lookups in prometheus-client take a lock and build a tuple; the request path
instead keeps the labelled children it has used in a dictionary.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    """The core's metric families, registered once per process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "sidemesh_requests_total",
            "Requests answered, by listener, route, cluster and status code.",
            ["listener", "route", "cluster", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "sidemesh_request_duration_seconds",
            "Time from the request head to the end of the response.",
            ["listener", "route", "cluster"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "sidemesh_upstream_errors_total",
            "Requests with an Envoy response flag (UF, UT, UC, UH, UO, URX, NR ...).",
            ["listener", "route", "cluster", "flag"],
            registry=registry,
        )
        self.attempts = Counter(
            "sidemesh_upstream_attempts_total",
            "Attempts sent upstream (first tries and retries).",
            ["cluster"],
            registry=registry,
        )
        self.retries = Counter(
            "sidemesh_retries_total",
            "Attempts after the first one.",
            ["cluster"],
            registry=registry,
        )
        self.config_version = Gauge(
            "sidemesh_config_info",
            "The applied config: 1 for the current version.",
            ["version", "source"],
            registry=registry,
        )
        self.config_applies = Counter(
            "sidemesh_config_apply_total",
            "Config apply attempts by result (ok, rejected).",
            ["result"],
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        key = (family._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def observe(
        self,
        listener: str,
        route: str,
        cluster: str,
        status: int,
        duration: float,
        flags: list[str],
        attempts: int,
    ) -> None:
        self.child(self.requests, listener, route, cluster, str(status)).inc()
        self.child(self.latency, listener, route, cluster).observe(duration)
        for flag in flags:
            self.child(self.upstream_errors, listener, route, cluster, flag).inc()
        if attempts:
            self.child(self.attempts, cluster).inc(attempts)
            if attempts > 1:
                self.child(self.retries, cluster).inc(attempts - 1)

    def set_config(self, version: str, source: str) -> None:
        self.config_version.clear()
        self.config_version.labels(version, source).set(1)
