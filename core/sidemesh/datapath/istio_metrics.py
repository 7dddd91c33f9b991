"""Istio's standard metrics, for a sidecar with ``telemetry: {metrics: istio}``.

The names, the 25 labels and the buckets are those of Istio's proxy
(https://istio.io/latest/docs/reference/config/metrics/, filled in as its ``istio_stats``
filter does), so Kiali, Istio's Grafana dashboards and alerts written for Istio read a
sidemesh sidecar unchanged. Istio learns the peer's workload from a metadata exchange
sidemesh does not have; here the peer is its SPIFFE identity (``request.peer_identity``,
set by an mTLS policy), whose service account is the peer's service in sidemesh's
identities, and what neither side can know is ``unknown``, as in Istio.

As in ``metrics.py``, each request adds to plain integers; the families are made when
``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sidemesh.datapath.grpc import is_grpc
from sidemesh.datapath.model import NodeConfig, TelemetryConfig

if TYPE_CHECKING:
    from sidemesh.datapath.messages import Request
    from sidemesh.datapath.outcome import Outcome

__all__ = ["ISTIO_BUCKETS", "ISTIO_LABELS", "IstioMetrics", "service_of"]

#: Istio's labels, in the order its proxy adds them.
ISTIO_LABELS = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)  # fmt: skip
#: Envoy's default histogram buckets, which Istio keeps for milliseconds and bytes alike.
ISTIO_BUCKETS = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)  # fmt: skip
#: ``le`` as Envoy prints it: ``1``, not ``1.0``.
_LE = [*(str(int(b)) if b.is_integer() else str(b) for b in ISTIO_BUCKETS), "+Inf"]
UNKNOWN = "unknown"
#: the canonical revision of a workload without a version label (Istio's default).
LATEST = "latest"
#: peers and clusters remembered with their labels; more than this starts afresh.
_CACHE_LIMIT = 4096

Labels = tuple[str, ...]


def service_of(name: str, namespace: str) -> tuple[str, str, str]:
    """(``destination_service``, ``_name``, ``_namespace``) of a cluster, read as
    Kubernetes reads a service name: ``reviews`` is in ``namespace``, ``reviews.prod``
    in ``prod``, ``reviews.prod.svc[.cluster.local]`` too; another name (an external
    host) is its own service, in no known namespace."""
    parts = name.split(".")
    if len(parts) == 1:
        parts.append(namespace)
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return f"{parts[0]}.{parts[1]}.svc.cluster.local", parts[0], parts[1]
    return name, name, UNKNOWN


def _peer(principal: str | None) -> Labels:
    """The source labels of an inbound request from ``principal`` (a SPIFFE ID)."""
    if principal is None:
        return (UNKNOWN, UNKNOWN, LATEST, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    namespace = account = UNKNOWN
    # spiffe://<trust domain>/ns/<namespace>/sa/<service account>
    parts, i = principal.split("/"), 3
    while i < len(parts) - 1:
        if parts[i] == "ns" and namespace == UNKNOWN:
            namespace, i = parts[i + 1], i + 2
        elif parts[i] == "sa" and account == UNKNOWN:
            account, i = parts[i + 1], i + 2
        else:
            i += 1
    return (account, account, LATEST, namespace, principal, account, UNKNOWN, UNKNOWN)


class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(ISTIO_BUCKETS) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.buckets[bisect_left(ISTIO_BUCKETS, value)] += 1
        self.sum += value

    def samples(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for le, count in zip(_LE, self.buckets, strict=True):
            cumulative += count
            out.append((le, cumulative))
        return out


class _Series:
    """One label set's requests: the count is the duration histogram's."""

    __slots__ = ("duration", "request_bytes", "response_bytes")

    def __init__(self) -> None:
        self.duration = _Histogram()
        self.request_bytes = _Histogram()
        self.response_bytes = _Histogram()


class IstioMetrics(Collector):
    """``istio_requests_total``, ``istio_request_duration_milliseconds``,
    ``istio_request_bytes`` and ``istio_response_bytes``, once :meth:`configure` turned
    them on; nothing at all otherwise."""

    def __init__(self) -> None:
        self.enabled = False
        self.series: dict[Labels, _Series] = {}
        self._node = NodeConfig("unknown")
        self._inbound: frozenset[str] = frozenset()
        #: (peer, TLS) -> the first 20 labels of an inbound request.
        self._peers: dict[tuple[str | None, bool], Labels] = {}
        #: cluster -> the first 20 labels of an outbound request.
        self._clusters: dict[str, Labels] = {}

    def configure(self, node: NodeConfig, telemetry: TelemetryConfig) -> None:
        """Follow an applied config; turning Istio's metrics off drops their series."""
        self.enabled = telemetry.metrics == "istio"
        if not self.enabled:
            self.series = {}
        self._node = node
        self._inbound = frozenset(telemetry.inbound_listeners)
        self._peers = {}
        self._clusters = {}

    def _inbound_head(self, peer: str | None, tls: bool) -> Labels:
        node = self._node
        service, name, namespace = service_of(node.service, node.namespace)
        # Our certificate is the node's identity whenever the client spoke TLS to us.
        principal = node.spiffe_id if tls else UNKNOWN
        return (
            "destination", *_peer(peer),
            node.service, node.namespace, principal, node.service, UNKNOWN, service,
            node.service, LATEST, name, namespace, UNKNOWN,
        )  # fmt: skip

    def _outbound_head(self, cluster: str) -> Labels:
        node = self._node
        service, name, namespace = UNKNOWN, UNKNOWN, UNKNOWN
        if cluster:  # none when no route matched
            service, name, namespace = service_of(cluster, node.namespace)
        return (
            "source",
            node.service, node.service, LATEST, node.namespace, UNKNOWN, node.service,
            UNKNOWN, UNKNOWN,
            UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, service, UNKNOWN, LATEST, name,
            namespace, UNKNOWN,
        )  # fmt: skip

    def observe(self, request: Request, outcome: Outcome, duration: float) -> None:
        if request.listener in self._inbound:
            peer = request.peer_identity
            tls = request.connection.tls
            head = self._peers.get((peer, tls))
            if head is None:
                if len(self._peers) >= _CACHE_LIMIT:
                    self._peers = {}
                head = self._peers[(peer, tls)] = self._inbound_head(peer, tls)
            security = "mutual_tls" if tls and peer is not None else "none"
        else:
            cluster = request.cluster
            head = self._clusters.get(cluster)
            if head is None:
                if len(self._clusters) >= _CACHE_LIMIT:
                    self._clusters = {}
                head = self._clusters[cluster] = self._outbound_head(cluster)
            # Istio: the policy cannot be known from the client side.
            security = UNKNOWN
        protocol, grpc_status = "http", ""
        if is_grpc(request.headers.get("content-type")):
            protocol = "grpc"
            response = outcome.response
            code = response.grpc_status if response is not None else None
            grpc_status = "" if code is None else str(code)
        flags = ",".join(outcome.flags) if outcome.flags else "-"
        key = (*head, protocol, str(outcome.status), grpc_status, flags, security)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        series.duration.add(duration * 1000.0)
        series.request_bytes.add(outcome.bytes_received)
        series.response_bytes.add(outcome.bytes_sent)

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        labels = list(ISTIO_LABELS)
        requests = CounterMetricFamily(
            "istio_requests", "Requests handled (Istio's Request Count).", labels=labels
        )
        histograms = [
            HistogramMetricFamily(name, doc, labels=labels)
            for name, doc in (
                ("istio_request_duration_milliseconds", "Duration of requests, in ms."),
                ("istio_request_bytes", "HTTP request body sizes, in bytes."),
                ("istio_response_bytes", "HTTP response body sizes, in bytes."),
            )
        ]
        for key, series in list(self.series.items()):
            values = list(key)
            requests.add_metric(values, sum(series.duration.buckets))
            for family, hist in zip(
                histograms,
                (series.duration, series.request_bytes, series.response_bytes),
                strict=True,
            ):
                family.add_metric(values, hist.samples(), hist.sum)
        yield requests
        yield from histograms
