"""What the demo reports, gathered from the mesh itself: the sidecars' ``/metrics`` and
``/clusters``, their access-log lines, the control plane's ``/v1/proxies``, the spans
they exported, and the certificates their listeners present. Nothing here comes from
what the demo sent or meant to happen."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from .app import ZipkinReceiver
from .config import SPLIT, Instance, Layout
from .ratings import GET_METHOD
from .traffic import ClusterWatcher, EjectionEvent

if TYPE_CHECKING:  # scale.py reads access logs with this module's helpers
    from .scale import Scaling

__all__ = ["Evidence", "GrpcCall", "InstanceView", "collect", "percentile", "samples"]

Samples = list[tuple[str, dict[str, str], float]]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page as (name, labels, value)."""
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in found
               if n == name and all(lab.get(k) == want for k, want in labels.items()))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


@dataclass
class InstanceView:
    instance: Instance
    address: str
    served: Counter[int] = field(default_factory=Counter)
    peers: Counter[str] = field(default_factory=Counter)
    presents: str | None = None
    presents_problem: str | None = None
    plain_refused: bool | None = None
    ejection_count: int = 0


@dataclass
class GrpcCall:
    """productpage's gRPC call to ratings, as each sidecar on its way logged it:
    ``client_side`` productpage's outbound listener, ``server_side`` the ratings pod's
    mTLS listener (access-log lines, ``None`` when a sidecar logged no such call)."""

    instance: Instance
    client_side: dict[str, Any] | None
    server_side: dict[str, Any] | None

    @property
    def trace_id(self) -> str | None:
        line = self.server_side or self.client_side or {}
        return str(line["trace_id"]) if line.get("trace_id") else None

    def problems(self) -> list[str]:
        out = []
        for side, line in (("productpage's sidecar", self.client_side),
                           (f"{self.instance.name}'s sidecar", self.server_side)):
            if line is None:
                out.append(f"{side} logged no gRPC call {GET_METHOD}")
            elif line.get("grpc_status") != 0 or line.get("protocol") != "HTTP/2":
                out.append(f"{side} logged {GET_METHOD} with grpc_status "
                           f"{line.get('grpc_status')} over {line.get('protocol')}, not 0 "
                           "over HTTP/2")
        if self.server_side is not None and not self.server_side.get("peer"):
            out.append(f"{self.instance.name}'s sidecar verified no client identity on the "
                       "gRPC call")
        return out


def _grpc_line(path: Path) -> dict[str, Any] | None:
    return next((line for line in read_jsonl(path) if line.get("path") == GET_METHOD), None)


@dataclass
class Evidence:
    version: int
    broken: Instance
    instances: list[InstanceView]
    split: dict[str, float]
    configured: dict[str, int]
    retries: dict[str, float]
    entry_codes: Counter[int]
    ejection_reasons: dict[str, float]
    events: list[EjectionEvent]
    latency_ms: dict[str, list[float]]
    trace: list[dict[str, Any]]
    spans_total: int
    proxies: list[dict[str, Any]]
    span_exports: float
    scaling: Scaling
    grpc: GrpcCall

    def problems(self) -> list[str]:
        """What the demo promised to show but the mesh's own numbers do not."""
        out = []
        if sum(self.split.values()) == 0:
            out.append("productpage's sidecar counted no split decisions "
                       "(sidemesh_split_requests_total)")
        if self.retries.get("saved", 0) == 0:
            out.append("no request was saved by a retry (sidemesh_retry_success_total is 0)")
        broken = next(v for v in self.instances if v.instance == self.broken)
        ejections = [e for e in self.events if e.address == broken.address]
        if not ejections:
            out.append(f"{self.broken.name} ({broken.address}) was never reported ejected "
                       "in productpage's sidecar /clusters")
        elif ejections[-1].returned_at is None:
            out.append(f"{self.broken.name} was ejected but had not come back at the end")
        if not any(v.peers for v in self.instances):
            out.append("no reviews sidecar logged a verified peer identity (access-log 'peer')")
        if not self.trace:
            out.append("no trace reached the Zipkin receiver")
        out += self.grpc.problems()
        if not any(str((s.get("tags") or {}).get("grpc.status_code")) == "0"
                   for s in self.trace):
            out.append("the trace shown has no span of the gRPC call with grpc.status_code 0")
        sc = self.scaling
        if sc.joined_at is None or sc.served == 0:
            out.append(f"the added pod {sc.instance.name} never served through productpage")
        if sc.left_at is None or sc.exit_code != 0:
            out.append(f"the stopped pod {sc.instance.name} did not leave cleanly "
                       f"(exit {sc.exit_code}, removed from /clusters: {sc.left_at is not None})")
        if sc.failed:
            out.append(f"{sc.failed} requests failed while reviews scaled 3 -> 4 -> 3")
        return out


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None


def _metrics(url: str) -> Samples:
    response = _get(f"{url}/metrics")
    return samples(response.text) if response is not None and response.is_success else []


def probe_identity(host: str, port: int) -> tuple[str | None, str | None]:
    """The SPIFFE ID in the certificate a TLS listener presents (no client cert sent, so
    the sidecar refuses the request afterwards: only its certificate is read)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=3.0) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return None, f"TLS handshake failed: {exc}"
    if der is None:
        return None, "no certificate presented"
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, "certificate without a SAN"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return (uris[0], None) if len(uris) == 1 else (None, f"URI SANs: {uris}")


def plain_refused(host: str, port: int) -> bool:
    """Does the listener refuse a plain-HTTP request (mTLS strict)?"""
    try:
        response = httpx.get(f"http://{host}:{port}/reviews/1", timeout=3.0)
    except httpx.HTTPError:
        return True
    return response.status_code >= 400


def _pick_trace(spans: list[dict[str, Any]], prefer: str | None) -> list[dict[str, Any]]:
    """The most telling trace: ``prefer`` (the gRPC call's) when it arrived, else one with
    a retry (several attempts) if any, else the largest complete one."""
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        traces.setdefault(str(span.get("traceId")), []).append(span)
    if prefer is not None and prefer in traces:
        return traces[prefer]

    def score(group: list[dict[str, Any]]) -> tuple[int, int, int]:
        services = {(s.get("localEndpoint") or {}).get("serviceName") for s in group}
        client_attempts = sum(1 for s in group if s.get("kind") == "CLIENT")
        return (len(services), client_attempts, len(group))

    return max(traces.values(), key=score) if traces else []


def collect(layout: Layout, zipkin: ZipkinReceiver, watcher: ClusterWatcher,
            access_log: Callable[[str], Path], proxies: list[dict[str, Any]], t0: float,
            version: int, broken: Instance, scaling: Scaling) -> Evidence:
    pp = _metrics(layout.pp_admin_url)
    split = {lab.get("destination", "?"): v for n, lab, v in pp
             if n == "sidemesh_split_requests_total" and lab.get("route") == "reviews"}
    configured = {f"reviews/{d['subset']}": int(d["weight"]) for d in SPLIT["destinations"]}
    retries = {
        "asked": total(pp, "sidemesh_retry_attempts_total", cluster="reviews"),
        "saved": total(pp, "sidemesh_retry_success_total", cluster="reviews"),
        "overflow": total(pp, "sidemesh_retry_overflow_total", cluster="reviews"),
        "attempts": total(pp, "sidemesh_upstream_attempts_total", cluster="reviews"),
    }
    entry_codes: Counter[int] = Counter()
    for n, lab, v in pp:
        if n == "sidemesh_requests_total" and lab.get("listener") == "inbound":
            entry_codes[int(lab.get("code", "0"))] += int(v)
    reasons = {lab.get("reason", "?"): v for n, lab, v in pp
               if n == "sidemesh_circuit_ejections_total" and lab.get("cluster") == "reviews"}
    clusters = _get(f"{layout.pp_admin_url}/clusters")
    ejection_counts: dict[str, int] = {}
    if clusters is not None and clusters.is_success:
        for cluster in clusters.json().get("clusters", []):
            for endpoint in cluster.get("endpoints", []) if cluster.get("name") == "reviews" \
                    else []:
                ejection_counts[endpoint.get("address", "?")] = int(
                    endpoint.get("ejection_count") or 0)
    views = []
    for inst in layout.instances:
        view = InstanceView(inst, layout.endpoint(inst),
                            ejection_count=ejection_counts.get(layout.endpoint(inst), 0))
        for n, lab, v in _metrics(layout.admin_url(inst)):
            if n == "sidemesh_requests_total" and lab.get("listener") == "inbound":
                view.served[int(lab.get("code", "0"))] += int(v)
        for line in read_jsonl(access_log(inst.name)):
            if line.get("peer"):
                view.peers[str(line["peer"])] += 1
        view.presents, view.presents_problem = probe_identity(inst.host, layout.reviews_inbound)
        view.plain_refused = plain_refused(inst.host, layout.reviews_inbound)
        views.append(view)
    latency: dict[str, list[float]] = {}
    for line in read_jsonl(access_log("productpage")):
        if isinstance(line.get("duration_ms"), int | float) and line.get("status") == 200:
            latency.setdefault(str(line.get("listener")), []).append(float(line["duration_ms"]))
    # Spans leave the sidecars in batches: give the last batch its flush interval.
    deadline = time.monotonic() + 3.0
    count = -1
    while time.monotonic() < deadline and count != len(zipkin.snapshot()):
        count = len(zipkin.snapshot())
        time.sleep(0.5)
    spans = zipkin.snapshot()
    exports = total(pp, "sidemesh_tracing_spans_exported_total")
    grpc = GrpcCall(layout.ratings, _grpc_line(access_log("productpage")),
                    _grpc_line(access_log(layout.ratings.name)))
    return Evidence(version, broken, views, split, configured, retries, entry_codes, reasons,
                    list(watcher.events), latency, _pick_trace(spans, grpc.trace_id),
                    len(spans), proxies, exports, scaling, grpc)
