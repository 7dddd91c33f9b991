"""With an OpenTelemetry SDK provider, spans are made through the API with the same ids
the plugin propagates and exports."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from sidemesh import (  # noqa: E402
    Attempt,
    ConnectionInfo,
    Headers,
    Request,
    Response,
    testing,
)
from sidemesh_tracing.policy import TracingPolicy  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


def _policy(provider: Any) -> TracingPolicy:
    context = testing.policy_context(
        "tracing", listener="outbound", route="r", node={"service": "productpage"}
    )
    policy = TracingPolicy({}, context)
    policy.tracer_provider = provider
    return policy


def test_sdk_spans_share_the_propagated_ids() -> None:
    memory = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(memory))
    policy = _policy(provider)
    request = Request(
        "GET",
        "/x",
        "svc:80",
        Headers([("traceparent", f"00-{TRACE}-{CALLER}-01")]),
        ConnectionInfo("127.0.0.1:1234"),
    )
    request.route, request.cluster = "r", "svc"
    policy.on_request(request)
    sent = []
    for number, status in ((1, 503), (2, 200)):
        ep = testing.make_endpoint("127.0.0.1:8080", cluster="svc")
        policy.select_upstream(request, [ep])
        sent.append((request.headers.get("traceparent") or "").split("-")[2])
        policy.on_response(request, Attempt(number, ep, Response(status), duration=0.001))
    policy.on_complete(request, Response(200), None)

    spans = memory.get_finished_spans()
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert f"{server.context.trace_id:032x}" == TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER
    assert request.log["span_id"] == f"{server.context.span_id:016x}"
    assert [f"{c.context.span_id:016x}" for c in clients] == sent
    assert all(c.parent is not None and c.parent.span_id == server.context.span_id for c in clients)
    assert clients[0].status.status_code is StatusCode.ERROR
    assert clients[0].attributes is not None
    assert clients[0].attributes["http.response.status_code"] == 503
    assert server.attributes is not None and server.attributes["http.request.method"] == "GET"
    provider.shutdown()


def test_a_global_sdk_provider_set_after_the_policy_is_used_within_the_recheck() -> None:
    # OpenTelemetry's global provider can be set once per process: a fresh interpreter.
    script = """
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sidemesh import ConnectionInfo, Headers, Request, Response, testing
import sidemesh_tracing.otel as otel
from sidemesh_tracing.policy import TracingPolicy

otel.RECHECK = 0.2
policy = TracingPolicy({}, testing.policy_context("tracing", listener="l", route="r"))

def served() -> None:
    request = Request("GET", "/", "svc", Headers(), ConnectionInfo("127.0.0.1:1"))
    request.route = "r"
    policy.on_request(request)
    policy.on_complete(request, Response(200), None)

served()  # no SDK yet: nothing recorded, and that answer is kept for RECHECK
memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(provider)
served()
before = len(memory.get_finished_spans())
time.sleep(0.3)
served()
print(before, len(memory.get_finished_spans()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["0", "1"]
