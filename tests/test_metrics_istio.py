"""``telemetry: {metrics: istio}``: Istio's standard metrics from real sidecars.

Two ``sidemesh proxy`` processes make a small mesh: ``productpage`` (an outbound
listener, originating mTLS) calls ``reviews`` (an mTLS inbound listener, and a plain one)
in front of a real upstream. Their ``/metrics`` are scraped as Prometheus scrapes them
and checked against Istio's documented metrics and labels,
https://istio.io/latest/docs/reference/config/metrics/ ("Istio Standard Metrics"), and
Envoy's default histogram buckets (``HistogramSettingsImpl::defaultBuckets``), which
Istio's proxy keeps for its milliseconds and bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidemesh.control.ca import CertificateAuthority
from sidemesh.datapath.istio_metrics import service_of
from sidemesh.testing import (
    ProxyProcess,
    Reply,
    SeenRequest,
    Upstream,
    free_port,
    installed,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana" / "sidemesh-istio.json"

# Written from https://istio.io/latest/docs/reference/config/metrics/ -----------------
#: "For HTTP, HTTP/2, and GRPC traffic, Istio generates the following metrics" (the gRPC
#: message counts need HTTP/2 streams, which sidemesh does not proxy).
ISTIO_HTTP_METRICS = {
    "istio_requests_total": "counter",
    "istio_request_duration_milliseconds": "histogram",
    "istio_request_bytes": "histogram",
    "istio_response_bytes": "histogram",
}
#: "Labels": Reporter, Source Workload, Source Workload Namespace, Source Principal,
#: Source App, Source Version, Destination Workload, Destination Workload Namespace,
#: Destination Principal, Destination App, Destination Version, Destination Service,
#: Destination Service Name, Destination Service Namespace, Request Protocol, Response
#: Code, Connection Security Policy, Response Flags, Canonical Service (four labels),
#: Destination Cluster, Source Cluster, gRPC Response Status.
ISTIO_LABELS = {
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "request_protocol", "response_code", "connection_security_policy", "response_flags",
    "source_canonical_service", "source_canonical_revision",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_cluster", "source_cluster", "grpc_response_status",
}  # fmt: skip
#: Envoy's default buckets, as its Prometheus output prints them.
ENVOY_LE = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
]  # fmt: skip
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
BODY = b"x" * 1234

needs_mtls = pytest.mark.skipif(not installed("mtls"), reason="the mtls plugin is not installed")


@dataclass
class Scrape:
    text: str
    types: dict[str, str]
    samples: list[Sample]

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [
            s for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip

    def one(self, name: str, **labels: str) -> Sample:
        (sample,) = self.find(name, **labels)
        return sample


def scrape(admin: int) -> Scrape:
    answer = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5)
    assert answer.status_code == 200
    types, samples = {}, []
    for family in text_string_to_metric_families(answer.text):
        # The parser names a counter's family without its "_total".
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = family.type
        samples.extend(family.samples)
    return Scrape(answer.text, types, samples)


def _svid(ca: CertificateAuthority, directory: Path, service: str) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    (directory / f"{service}.crt").write_bytes(
        ca.sign_csr(pem, namespace="default", service=service)
    )
    (directory / f"{service}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {
        "cert_file": str(directory / f"{service}.crt"),
        "key_file": str(directory / f"{service}.key"),
        "bundle_file": str(directory / "bundle.pem"),
    }


def _app(request: SeenRequest) -> Reply:
    if request.path == "/reviews/fail":
        return Reply(status=503, body=b"down")
    if request.headers.get("content-type") == "application/grpc":
        return Reply(
            body=b"\0\0\0\0\0", headers={"content-type": "application/grpc", "grpc-status": "7"}
        )
    return Reply(body=BODY)


def _start(stack: ExitStack, directory: Path, name: str, doc: dict[str, Any]) -> int:
    admin = free_port()
    path = directory / f"{name}.yaml"
    # JSON is YAML too, and has no anchors for the dicts shared above.
    path.write_text(json.dumps({**doc, "admin": f"127.0.0.1:{admin}"}))
    proc = stack.enter_context(ProxyProcess("proxy", "-c", str(path)))
    proc.wait_http(f"http://127.0.0.1:{admin}/ready")
    return admin


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Scrape, Scrape]]:
    """(productpage's scrape, reviews' scrape) after a few requests through the mesh."""
    directory = tmp_path_factory.mktemp("mesh")
    ca = CertificateAuthority.open(directory / "ca", "cluster.local")
    (directory / "bundle.pem").write_bytes(ca.trust_bundle_pem())
    inbound, plain, outbound = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        app = stack.enter_context(Upstream(_app))
        route = {"name": "local", "match": {"prefix": "/"}, "cluster": "local"}
        reviews = _start(stack, directory, "reviews", {
            "node": {"service": "reviews"},
            "telemetry": {"metrics": "istio", "inbound_listeners": ["inbound", "plain"]},
            "clusters": [{"name": "local", "endpoints": [{"address": app.address}]}],
            "listeners": [
                {"name": "inbound", "address": f"127.0.0.1:{inbound}", "routes": [route],
                 "plugins": [{"name": "mtls", "config": _svid(ca, directory, "reviews")}]},
                {"name": "plain", "address": f"127.0.0.1:{plain}", "routes": [route]},
            ],
        })  # fmt: skip
        mtls = {"expect": REVIEWS, **_svid(ca, directory, "productpage")}
        productpage = _start(stack, directory, "productpage", {
            "node": {"service": "productpage"},
            "telemetry": {"metrics": "istio"},
            "clusters": [{"name": "reviews",
                          "endpoints": [{"address": f"127.0.0.1:{inbound}"}]}],
            "listeners": [{"name": "outbound", "address": f"127.0.0.1:{outbound}", "routes": [
                {"name": "reviews", "match": {"prefix": "/reviews"}, "cluster": "reviews",
                 "plugins": [{"name": "mtls", "config": mtls}]}]}],
        })  # fmt: skip
        with httpx.Client(
            base_url=f"http://127.0.0.1:{outbound}", timeout=10, headers={"host": "reviews"}
        ) as client:
            assert client.post("/reviews/1", content=b"rating=5").content == BODY
            assert client.get("/reviews/fail").status_code == 503
            assert client.get("/nowhere").status_code == 404
            grpc = client.post(
                "/reviews/grpc", content=b"\0\0\0\0\0", headers={"content-type": "application/grpc"}
            )
            assert grpc.headers["grpc-status"] == "7"
        assert httpx.get(f"http://127.0.0.1:{plain}/reviews/2", timeout=10).content == BODY
        yield scrape(productpage), scrape(reviews)


def _istio_samples(s: Scrape) -> list[Sample]:
    return [x for x in s.samples if x.name.startswith("istio_")]


@needs_mtls
def test_names_types_labels_and_buckets_are_istios(mesh: tuple[Scrape, Scrape]) -> None:
    for s in mesh:
        istio = {name: kind for name, kind in s.types.items() if name.startswith("istio_")}
        assert istio == ISTIO_HTTP_METRICS
        assert _istio_samples(s)
        for sample in _istio_samples(s):
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == ISTIO_LABELS | extra, sample
        for name in (
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ):
            for count in s.find(f"{name}_count"):
                series = {k: v for k, v in count.labels.items()}
                buckets = [b for b in s.find(f"{name}_bucket", **series)]
                assert [b.labels["le"] for b in buckets] == ENVOY_LE
                assert buckets[-1].value == count.value
        # Requests are Istio's only: sidemesh's per-request families stay empty.
        assert not s.find("sidemesh_requests_total")


@needs_mtls
def test_the_server_side_names_its_mtls_peer(mesh: tuple[Scrape, Scrape]) -> None:
    _, reviews = mesh
    ok = reviews.one(
        "istio_requests_total",
        response_code="200",
        request_protocol="http",
        connection_security_policy="mutual_tls",
    )
    assert ok.value == 1
    expected = {
        "reporter": "destination", "source_workload": "productpage",
        "source_workload_namespace": "default", "source_principal": PRODUCTPAGE,
        "source_app": "productpage", "source_canonical_service": "productpage",
        "source_canonical_revision": "latest", "source_version": "unknown",
        "source_cluster": "unknown", "destination_workload": "reviews",
        "destination_workload_namespace": "default", "destination_principal": REVIEWS,
        "destination_app": "reviews",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews", "destination_service_namespace": "default",
        "destination_canonical_service": "reviews", "response_flags": "-",
        "grpc_response_status": "",
    }  # fmt: skip
    assert {k: ok.labels[k] for k in expected} == expected
    # Body sizes: the client's 8-byte body, the upstream's 1234-byte answer.
    labels = ok.labels
    assert reviews.one("istio_request_bytes_sum", **labels).value == 8
    assert reviews.one("istio_response_bytes_sum", **labels).value == len(BODY)
    assert reviews.one("istio_request_bytes_bucket", le="10", **labels).value == 1
    assert reviews.one("istio_request_bytes_bucket", le="5", **labels).value == 0
    assert reviews.one("istio_response_bytes_bucket", le="2500", **labels).value == 1
    assert reviews.one("istio_response_bytes_bucket", le="1000", **labels).value == 0
    assert reviews.one("istio_request_duration_milliseconds_count", **labels).value == 1
    assert 0 < reviews.one("istio_request_duration_milliseconds_sum", **labels).value < 10_000

    # The plain listener is inbound too, with nobody to name.
    plain = reviews.one("istio_requests_total", connection_security_policy="none")
    assert plain.value == 1 and plain.labels["reporter"] == "destination"
    assert plain.labels["source_workload"] == plain.labels["source_principal"] == "unknown"
    assert plain.labels["destination_principal"] == "unknown"
    assert (
        reviews.one("istio_requests_total", response_code="503").labels[
            "connection_security_policy"
        ]
        == "mutual_tls"
    )


@needs_mtls
def test_the_client_side_reports_as_source(mesh: tuple[Scrape, Scrape]) -> None:
    productpage, _ = mesh
    samples = productpage.find("istio_requests_total")
    assert {s.labels["reporter"] for s in samples} == {"source"}
    assert {s.labels["connection_security_policy"] for s in samples} == {"unknown"}
    ok = productpage.one("istio_requests_total", response_code="200", request_protocol="http")
    assert ok.value == 1
    assert {k: v for k, v in ok.labels.items() if v != "unknown"} == {
        "reporter": "source", "source_workload": "productpage",
        "source_workload_namespace": "default", "source_app": "productpage",
        "source_canonical_service": "productpage", "source_canonical_revision": "latest",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews", "destination_service_namespace": "default",
        "destination_canonical_revision": "latest", "request_protocol": "http",
        "response_code": "200", "grpc_response_status": "", "response_flags": "-",
    }  # fmt: skip
    assert productpage.one("istio_request_bytes_sum", **ok.labels).value == 8
    assert productpage.one("istio_response_bytes_sum", **ok.labels).value == len(BODY)
    failed = productpage.one("istio_requests_total", response_code="503")
    assert failed.labels["response_flags"] == "-"  # the upstream's own answer
    assert productpage.one("istio_response_bytes_sum", **failed.labels).value == 4
    # No route: Envoy's NR, and no destination to name.
    unrouted = productpage.one("istio_requests_total", response_code="404")
    assert unrouted.labels["response_flags"] == "NR"
    assert unrouted.labels["destination_service"] == "unknown"
    grpc = productpage.one("istio_requests_total", request_protocol="grpc")
    assert grpc.labels["grpc_response_status"] == "7" and grpc.labels["response_code"] == "200"
    # The pool keeps its connection to reviews open; nothing is in flight any more.
    assert (
        productpage.one("envoy_cluster_upstream_cx_active", envoy_cluster_name="reviews").value == 1
    )
    assert (
        productpage.one("envoy_cluster_upstream_rq_active", envoy_cluster_name="reviews").value == 0
    )


# PromQL: selectors ({...}) and groupings (by/without (...)) hold label names; what is
# left names metrics.
_SELECTOR = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_METRIC = re.compile(r"\b(?:istio|envoy)_\w+")
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\s*\)")


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs + variables


@needs_mtls
def test_the_grafana_dashboard_queries_only_what_a_sidecar_exposes(
    mesh: tuple[Scrape, Scrape],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(dashboard)
    assert len(queries) >= 10
    exposed = {s.name for scrape in mesh for s in scrape.samples}
    known_labels = ISTIO_LABELS | {"le", "envoy_cluster_name"}
    used: set[str] = set()
    for query in queries:
        labels: set[str] = set()
        found = _LABEL_VALUES.fullmatch(query)
        if found is not None:
            query, label = found.groups()
            labels.add(label)
        for selector in _SELECTOR.findall(query):
            labels.update(_MATCHER.findall(selector))
        for grouping in _GROUPING.findall(query):
            labels.update(name.strip() for name in grouping.split(","))
        metrics = _METRIC.findall(_GROUPING.sub(" ", _SELECTOR.sub(" ", query)))
        assert metrics, query
        assert set(metrics) <= exposed, (query, set(metrics) - exposed)
        assert labels <= known_labels, (query, labels - known_labels)
        used.update(metrics)
    # Request volume, latency percentiles and sizes, like Istio's Service Dashboard.
    assert {
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_request_bytes_bucket",
        "istio_response_bytes_bucket",
    } <= used


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("reviews", ("reviews.web.svc.cluster.local", "reviews", "web")),
        ("reviews.prod", ("reviews.prod.svc.cluster.local", "reviews", "prod")),
        ("reviews.prod.svc", ("reviews.prod.svc.cluster.local", "reviews", "prod")),
        ("reviews.prod.svc.cluster.local", ("reviews.prod.svc.cluster.local", "reviews", "prod")),
        ("api.example.com", ("api.example.com", "api.example.com", "unknown")),
    ],
)
def test_a_cluster_names_its_service_as_kubernetes_would(
    cluster: str, expected: tuple[str, str, str]
) -> None:
    assert service_of(cluster, "web") == expected


def test_telemetry_is_checked_with_its_path() -> None:
    doc: dict[str, Any] = {"node": {"service": "web"}, "telemetry": {"metrics": "prometheus"}}
    (error,) = validate_config(doc)
    assert (error.path, error.rule) == ("telemetry.metrics", "enum")
    assert "sidemesh, istio" in error.message
    doc["telemetry"] = {"metrics": "istio", "inbound": ["x"]}
    (error,) = validate_config(doc)
    assert (error.path, error.rule) == ("telemetry.inbound", "additionalProperties")
    assert "inbound_listeners" in error.message
    doc["telemetry"] = {"metrics": "istio", "inbound_listeners": ["inbund"]}
    doc["listeners"] = [{"name": "inbound", "address": "127.0.0.1:0", "routes": []}]
    (error,) = validate_config(doc)
    assert (error.path, error.rule) == ("telemetry.inbound_listeners[0]", "listener")
    assert error.message == "no listener is named 'inbund'; did you mean 'inbound'?"
