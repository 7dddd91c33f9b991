"""Export through a real sidecar: OTLP/HTTP to a real receiver that decodes the protobuf
body with opentelemetry-proto, and Zipkin to a collector named by its full URL."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import REGISTRY

from sidemesh import testing
from sidemesh_tracing.exporter import zipkin_url
from sidemesh_tracing.otlp import endpoint_from_env, otlp_url

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
PROTOBUF = "application/x-protobuf"


class OtlpReceiver:
    """An OTLP/HTTP receiver: ``POST {path}`` with an ``ExportTraceServiceRequest``."""

    def __init__(self, path: str = "/v1/traces") -> None:
        self.path = path
        self.exports: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()

    def handle(self, seen: testing.SeenRequest) -> testing.Reply:
        if seen.method != "POST" or seen.path != self.path:
            return testing.Reply(404, b"")
        if seen.headers.get("content-type") != PROTOBUF:
            return testing.Reply(415, b"")
        message = ExportTraceServiceRequest()
        message.ParseFromString(seen.body)
        with self.lock:
            self.exports.append((seen.headers, message))
        body = ExportTraceServiceResponse().SerializeToString()
        return testing.Reply(200, body, {"content-type": PROTOBUF})

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Each span with its resource's attributes."""
        with self.lock:
            exports = [message for _, message in self.exports]
        found: list[tuple[dict[str, Any], Span]] = []
        for message in exports:
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


def _attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value") or "string_value")
    return values


def _exported(exporter: str) -> float:
    sample = REGISTRY.get_sample_value("sidemesh_tracing_spans_exported_total",
                                       {"exporter": exporter})
    return sample or 0.0


def _sidecar(service: str, tracing: dict[str, Any]) -> dict[str, Any]:
    return testing.simple_config(service, listener_plugins=[{"name": "tracing",
                                                             "config": tracing}])


def test_otlp_and_zipkin_get_the_same_spans_from_a_sidecar() -> None:
    receiver = OtlpReceiver()
    before = _exported("otlp")
    with (
        testing.Upstream(receiver.handle, name="otlp") as otlp,
        testing.Upstream(lambda _: testing.Reply(202, b""), name="zipkin") as zipkin,
        testing.Upstream(name="service") as service,
    ):
        doc = _sidecar(service.address, {
            "service_name": "productpage",
            # The full URL, as OTEL_EXPORTER_ZIPKIN_ENDPOINT is written.
            "zipkin": {"endpoint": f"http://{zipkin.address}/api/v2/spans",
                       "flush_interval": "50ms"},
            "otlp": {"endpoint": f"http://{otlp.address}", "flush_interval": "50ms"},
        })
        with testing.running_sidecar(doc) as sidecar:
            reply = httpx.get(sidecar.url("main") + "/hello?x=1", timeout=10, headers={
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            })
            assert reply.status_code == 200
            assert testing.wait_for(lambda: len(receiver.spans()) >= 2, timeout=10)
            assert testing.wait_for(lambda: len(zipkin.requests) >= 1, timeout=10)
        sent = service.requests[0].headers["traceparent"]
    assert {r.path for r in zipkin.requests} == {"/api/v2/spans"}
    zipkin_spans = {s["id"]: s for r in zipkin.requests for s in json.loads(r.body)}

    spans = receiver.spans()
    assert len(spans) == 2
    by_kind = {span.kind: (resource, span) for resource, span in spans}
    resource, server = by_kind[Span.SPAN_KIND_SERVER]
    _, client = by_kind[Span.SPAN_KIND_CLIENT]
    assert resource["service.name"] == "productpage"
    assert resource["telemetry.sdk.name"] == "opentelemetry"
    assert {s.trace_id.hex() for _, s in spans} == {CALLER_TRACE}
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert client.parent_span_id.hex() == server.span_id.hex()
    # The upstream's parent is the client span we exported, under both formats.
    assert sent == f"00-{CALLER_TRACE}-{client.span_id.hex()}-01"
    assert set(zipkin_spans) == {server.span_id.hex(), client.span_id.hex()}
    assert server.trace_state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert server.end_time_unix_nano > server.start_time_unix_nano > 0
    tags = _attributes(server)
    assert tags["http.request.method"] == "GET"
    assert tags["url.path"] == "/hello"
    assert tags["http.response.status_code"] == 200
    assert tags["guid:x-request-id"] == zipkin_spans[server.span_id.hex()]["tags"][
        "guid:x-request-id"]
    assert _exported("otlp") == before + 2


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://{addr}/"}, "/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://{addr}/otlp"}, "/otlp/v1/traces"),
        # The traces variable is the full URL, used as written, and wins.
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://{addr}/custom/spans"},
         "/custom/spans"),
    ],
)
def test_otlp_endpoint_and_headers_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], path: str
) -> None:
    receiver = OtlpReceiver(path)
    with (
        testing.Upstream(receiver.handle, name="otlp") as otlp,
        testing.Upstream(name="service") as service,
    ):
        for name, value in env.items():
            monkeypatch.setenv(name, value.format(addr=otlp.address))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=from-env,x-tenant=env")
        doc = _sidecar(service.address, {
            "otlp": {"flush_interval": "50ms", "headers": {"x-tenant": "config"}},
        })
        with testing.running_sidecar(doc) as sidecar:
            assert httpx.get(sidecar.url("main") + "/", timeout=10).status_code == 200
            assert testing.wait_for(lambda: len(receiver.spans()) >= 2, timeout=10)
    headers = receiver.exports[0][0]
    assert (headers["x-api-key"], headers["x-tenant"]) == ("from-env", "config")


def test_a_dead_otlp_receiver_costs_spans_not_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK exporter retries until its timeout (standard variable): keep it short.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    labels = {"exporter": "otlp", "reason": "export_failed"}

    def dropped() -> float:
        return REGISTRY.get_sample_value("sidemesh_tracing_spans_dropped_total", labels) or 0.0

    before = dropped()
    with testing.Upstream(name="service") as service:
        doc = _sidecar(service.address, {
            "otlp": {"endpoint": f"http://127.0.0.1:{testing.free_port()}",
                     "flush_interval": "10ms"},
        })
        with testing.running_sidecar(doc) as sidecar:
            for _ in range(3):
                reply = httpx.get(sidecar.url("main") + "/", timeout=10)
                assert reply.status_code == 200
                assert reply.elapsed.total_seconds() < 0.5
            assert testing.wait_for(lambda: dropped() >= before + 6, timeout=15)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://zipkin:9411", "http://zipkin:9411/api/v2/spans"),
        ("http://zipkin:9411/", "http://zipkin:9411/api/v2/spans"),
        ("http://zipkin:9411/api/v2/spans", "http://zipkin:9411/api/v2/spans"),
        ("http://zipkin:9411/api/v2/spans/", "http://zipkin:9411/api/v2/spans"),
        ("https://gw/zipkin", "https://gw/zipkin/api/v2/spans"),
    ],
)
def test_zipkin_endpoint_with_or_without_the_path(endpoint: str, url: str) -> None:
    assert zipkin_url(endpoint) == url


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("https://gw/otlp/", "https://gw/otlp/v1/traces"),
    ],
)
def test_otlp_endpoint_with_or_without_the_path(endpoint: str, url: str) -> None:
    assert otlp_url(endpoint) == url


def test_otlp_default_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert endpoint_from_env() == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    ("otlp", "where"),
    [
        ({"endpoint": "ftp://collector"}, "config.otlp.endpoint"),
        ({"batch": 1}, "config.otlp"),
        ({"headers": {"bad name": "x"}}, "config.otlp.headers"),
        ({"headers": {"x-key": "a\r\nb"}}, "config.otlp.headers['x-key']"),
        ({"flush_interval": "0s"}, "config"),
    ],
)
def test_bad_otlp_config_is_refused_with_its_path(otlp: dict[str, Any], where: str) -> None:
    doc = _sidecar("127.0.0.1:1", {"otlp": otlp})
    errors = testing.validate_config(doc)
    assert errors, otlp
    assert any(where in e.path for e in errors), [str(e) for e in errors]


def test_otlp_config_may_be_empty() -> None:
    assert testing.validate_config(_sidecar("127.0.0.1:1", {"otlp": {}})) == []
    assert testing.validate_config(_sidecar("127.0.0.1:1", {"otlp": None})) == []
