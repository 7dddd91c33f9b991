"""The plugin's Prometheus counters, on prometheus_client's default registry (the one
the admin ``/metrics`` endpoint serves)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["SPANS_DROPPED", "SPANS_EXPORTED"]

SPANS_EXPORTED = Counter(
    "sidemesh_tracing_spans_exported",
    "Spans accepted by a collector, by exporter (zipkin, otlp).",
    ["exporter"],
)
SPANS_DROPPED = Counter(
    "sidemesh_tracing_spans_dropped",
    "Spans not exported, by exporter (zipkin, otlp): the queue was full (queue_full) or "
    "the collector failed or could not be reached (export_failed).",
    ["exporter", "reason"],
)
