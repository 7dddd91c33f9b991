"""End to end through real sidecars: client -> sidecar A -> sidecar B -> service, both
sidecars exporting to one real Zipkin-like collector."""

from __future__ import annotations

import json
from typing import Any

import httpx

from sidemesh import testing

Reply, Upstream, running_sidecar = testing.Reply, testing.Upstream, testing.running_sidecar
simple_config, wait_for = testing.simple_config, testing.wait_for

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def _tracing(collector: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tracing",
        "config": {
            "zipkin": {"endpoint": f"http://{collector}", "flush_interval": "50ms"},
            **extra,
        },
    }


def test_one_trace_across_two_sidecars() -> None:
    with (
        Upstream(lambda _: Reply(202, b""), name="zipkin") as collector,
        Upstream(name="service") as service,
    ):
        doc_b = simple_config(service.address, listener_plugins=[_tracing(collector.address)])
        doc_b["node"]["service"] = "sidecar-b"
        with running_sidecar(doc_b) as b:
            doc_a = simple_config(
                f"127.0.0.1:{b.port('main')}",
                listener_plugins=[_tracing(collector.address, propagation=["w3c", "b3"])],
            )
            doc_a["node"]["service"] = "sidecar-a"
            with running_sidecar(doc_a) as a:
                reply = httpx.get(
                    a.url("main") + "/hello",
                    timeout=10,
                    headers={
                        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                        "tracestate": "rojo=00f067aa0ba902b7, ,congo=t61rcWkgMzE",
                    },
                )
                assert reply.status_code == 200

                def spans() -> list[dict[str, Any]]:
                    return [s for r in collector.requests for s in json.loads(r.body)]

                assert wait_for(lambda: len(spans()) >= 4, timeout=10), spans()
        assert {r.path for r in collector.requests} == {"/api/v2/spans"}
        seen = service.requests[0].headers
    by_key = {(s["localEndpoint"]["serviceName"], s["kind"]): s for s in spans()}
    a_server, a_client = by_key["sidecar-a", "SERVER"], by_key["sidecar-a", "CLIENT"]
    b_server, b_client = by_key["sidecar-b", "SERVER"], by_key["sidecar-b", "CLIENT"]
    assert {s["traceId"] for s in spans()} == {CALLER_TRACE}
    assert a_server["parentId"] == CALLER_SPAN
    assert a_client["parentId"] == a_server["id"]
    assert b_server["parentId"] == a_client["id"]
    assert b_client["parentId"] == b_server["id"]
    # The service sees B's client span as its parent, and the tracestate unchanged.
    assert seen["traceparent"] == f"00-{CALLER_TRACE}-{b_client['id']}-01"
    assert seen["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert "b3" not in seen  # B propagates w3c only and drops A's stale b3
    # One x-request-id for the whole path, as Envoy does.
    assert len({s["tags"]["guid:x-request-id"] for s in spans()}) == 1
    assert a_server["tags"]["http.response.status_code"] == "200"
