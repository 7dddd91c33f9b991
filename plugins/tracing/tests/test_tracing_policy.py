"""The tracing policy driven the way the core drives it (the public Request/Attempt
objects), exporting to a real local Zipkin-like HTTP receiver."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import REGISTRY

from sidemesh import (
    Attempt,
    ConnectionInfo,
    EndpointView,
    Headers,
    Request,
    Response,
    ResponseFlag,
    testing,
)
from sidemesh_tracing.policy import TracingPolicy

CONFORMANCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "conformance"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"
HEX16 = r"^[0-9a-f]{16}$"


class Receiver:
    """A minimal Zipkin collector: accepts ``POST /api/v2/spans`` and keeps the bodies."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.paths: list[str] = []
        self.arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await asyncio.wait_for(reader.readexactly(length), 10)
                self.paths.append(lines[0].split(" ")[1])
                self.batches.append(json.loads(body))
                self.arrived.set()
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [span for batch in self.batches for span in batch]


@asynccontextmanager
async def zipkin_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_policy(config: dict[str, Any]) -> TracingPolicy:
    context = testing.policy_context(
        "tracing",
        listener="outbound",
        route="reviews",
        scope="listener",
        node={"service": "productpage"},
    )
    return TracingPolicy(config, context)


def make_request(headers: list[tuple[str, str]]) -> Request:
    request = Request(
        "GET",
        "/reviews/1?x=1",
        "reviews:9080",
        Headers(headers),
        ConnectionInfo("127.0.0.1:50000"),
        listener="outbound",
    )
    request.route = "reviews"
    request.cluster = "reviews"
    return request


def endpoint(port: int) -> EndpointView:
    return testing.make_endpoint(f"127.0.0.1:{port}", cluster="reviews")


def run_request(policy: TracingPolicy, request: Request, statuses: list[int | None]) -> list[str]:
    """One request through the hooks with one attempt per status (``None``: connect
    failure); returns the ``traceparent`` each attempt sent upstream."""
    assert policy.on_request(request) is None
    sent = []
    for number, status in enumerate(statuses, start=1):
        ep = endpoint(9080 + number)
        request.attempts = number  # as the core counts them, before select_upstream
        policy.select_upstream(request, [ep])
        sent.append(request.headers.get("traceparent") or "")
        request.tried.append(ep)
        response = Response(status) if status is not None else None
        attempt = Attempt(
            number,
            ep,
            response,
            flag=None if status else ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
            error=None if status else "connection refused",
            duration=0.002,
        )
        policy.on_response(request, attempt)
    final = Response(statuses[-1]) if statuses[-1] is not None else Response(503)
    failed = ResponseFlag.UPSTREAM_CONNECTION_FAILURE
    policy.on_complete(request, final, None if statuses[-1] else failed)
    return sent


def test_retries_are_sibling_client_spans_with_their_own_ids() -> None:
    async def scenario() -> None:
        async with zipkin_receiver() as (receiver, url):
            policy = make_policy({"zipkin": {"endpoint": url, "flush_interval": "50ms"}})
            request = make_request(
                [
                    ("traceparent", f"00-{TRACE}-{CALLER}-01"),
                    ("tracestate", "congo=t61rcWkgMzE"),
                    ("x-request-id", "req-1"),
                ]
            )
            sent = run_request(policy, request, [None, 503, 200])
            await asyncio.wait_for(_until(receiver, 4), 10)
            await policy.close()
        spans = receiver.spans
        assert receiver.paths[0] == "/api/v2/spans"
        server = next(s for s in spans if s["kind"] == "SERVER")
        clients = sorted(
            (s for s in spans if s["kind"] == "CLIENT"),
            key=lambda s: s["tags"].get("http.request.resend_count", "0"),
        )
        assert server["traceId"] == TRACE and server["parentId"] == CALLER
        assert {c["parentId"] for c in clients} == {server["id"]}
        assert {c["traceId"] for c in clients} == {TRACE}
        # Each attempt sent its own span id upstream, and it is that attempt's span.
        assert [tp.split("-")[2] for tp in sent] == [c["id"] for c in clients]
        assert len(set(sent)) == 3 and all(tp.startswith(f"00-{TRACE}-") for tp in sent)
        assert request.headers.get("tracestate") == "congo=t61rcWkgMzE"
        assert clients[0]["tags"]["response_flags"] == "UF" and "error" in clients[0]["tags"]
        assert clients[1]["tags"]["http.response.status_code"] == "503"
        assert "error" not in clients[2]["tags"]
        assert clients[2]["remoteEndpoint"] == {
            "serviceName": "reviews",
            "ipv4": "127.0.0.1",
            "port": 9083,
        }
        assert server["localEndpoint"] == {"serviceName": "productpage"}
        assert server["tags"]["guid:x-request-id"] == "req-1"
        assert server["tags"]["http.request.method"] == "GET"
        assert server["tags"]["url.path"] == "/reviews/1"
        assert server["tags"]["server.address"] == "reviews"
        assert server["tags"]["server.port"] == "9080"
        assert server["tags"]["network.peer.address"] == "127.0.0.1"
        assert server["tags"]["route_name"] == "reviews"
        assert server["tags"]["upstream_cluster"] == "reviews"
        assert server["tags"]["http.response.status_code"] == "200"
        assert request.log == {"trace_id": TRACE, "span_id": server["id"]}
        _validate(spans)

    asyncio.run(scenario())


async def _until(receiver: Receiver, count: int) -> None:
    while len(receiver.spans) < count:
        receiver.arrived.clear()
        await receiver.arrived.wait()


def _validate(spans: list[dict[str, Any]]) -> None:
    schema_path = CONFORMANCE / "zipkin" / "zipkin2-listofspans.schema.json"
    if not schema_path.exists():
        pytest.skip("shared conformance data not present")
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(spans)
    # The published patterns are unanchored: check the ids strictly ourselves.
    for span in spans:
        assert jsonschema.Draft7Validator({"pattern": r"^[0-9a-f]{32}$"}).is_valid(span["traceId"])
        for key in ("id", "parentId"):
            if key in span:
                assert jsonschema.Draft7Validator({"pattern": HEX16}).is_valid(span[key])


def test_server_5xx_is_an_error_and_new_trace_gets_request_id() -> None:
    async def scenario() -> None:
        async with zipkin_receiver() as (receiver, url):
            policy = make_policy(
                {
                    "zipkin": {"endpoint": url, "flush_interval": "50ms"},
                    "propagation": ["w3c", "b3multi"],
                    "service_name": "pp",
                }
            )
            request = make_request([])
            run_request(policy, request, [503])
            await asyncio.wait_for(_until(receiver, 2), 10)
            await policy.close()
        server = next(s for s in receiver.spans if s["kind"] == "SERVER")
        assert "parentId" not in server
        assert server["tags"]["error"] == "HTTP 503"
        assert server["localEndpoint"]["serviceName"] == "pp"
        rid = request.headers.get("x-request-id")
        assert rid and server["tags"]["guid:x-request-id"] == rid
        assert request.headers.get("x-b3-traceid") == server["traceId"]
        _validate(receiver.spans)

    asyncio.run(scenario())


def test_unsampled_requests_propagate_but_export_nothing() -> None:
    async def scenario() -> None:
        async with zipkin_receiver() as (receiver, url):
            policy = make_policy(
                {"zipkin": {"endpoint": url, "flush_interval": "50ms"}, "sampling": 1.0}
            )
            request = make_request([("traceparent", f"00-{TRACE}-{CALLER}-00")])
            sent = run_request(policy, request, [503, 200])
            assert policy.exporter is not None and policy.exporter.queued == 0
            await policy.close()
            assert receiver.spans == []
        assert len(set(sent)) == 2
        assert all(tp.startswith(f"00-{TRACE}-") and tp.endswith("-00") for tp in sent)
        assert request.log["trace_id"] == TRACE

    asyncio.run(scenario())


def test_without_a_collector_the_upstream_and_the_log_see_the_same_context() -> None:
    # No collector and no SDK: no span is built, but each attempt still sends its own
    # sampled span id under the caller's trace, as with a collector.
    policy = make_policy({})
    request = make_request([("traceparent", f"00-{TRACE}-{CALLER}-01")])
    sent = run_request(policy, request, [None, 503, 200])
    ids = [tp.split("-")[2] for tp in sent]
    assert all(tp.startswith(f"00-{TRACE}-") and tp.endswith("-01") for tp in sent)
    assert len(set(ids)) == 3 and CALLER not in ids and request.log["span_id"] not in ids
    assert request.log["trace_id"] == TRACE
    assert request.headers.get("traceparent") == sent[-1]  # not rewritten after the answer
    assert request.headers.get("x-request-id")


def test_ratio_zero_samples_no_root() -> None:
    policy = make_policy({"sampling": 0.0})
    request = make_request([])
    policy.on_request(request)
    policy.select_upstream(request, [])  # before the attempt: what the upstream gets
    assert (request.headers.get("traceparent") or "").endswith("-02")  # random, unsampled
    request = make_request([("b3", "1")])  # caller forces sampling
    policy.on_request(request)
    policy.select_upstream(request, [])
    assert (request.headers.get("traceparent") or "").endswith("-03")


ZIPKIN = {"exporter": "zipkin"}


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _dropped(reason: str) -> float:
    return _metric("sidemesh_tracing_spans_dropped_total", {**ZIPKIN, "reason": reason})


def test_unreachable_collector_never_delays_requests_and_counts_drops() -> None:
    for hook in ("on_request", "select_upstream", "on_response", "on_complete"):
        assert not inspect.iscoroutinefunction(getattr(TracingPolicy, hook))

    async def scenario() -> None:
        dropped = _dropped("export_failed")
        full = _dropped("queue_full")
        policy = make_policy(
            {
                "zipkin": {
                    "endpoint": f"http://127.0.0.1:{closed_port()}",
                    "flush_interval": "10ms",
                    "max_queue": 4,
                }
            }
        )
        # Hooks are sync: they run to completion with no chance to touch the network.
        for _ in range(3):
            run_request(policy, make_request([]), [200])
        assert policy.exporter is not None
        assert (
            _dropped("queue_full") == full + 2
        )  # 6 spans, room for 4
        for _ in range(200):
            if (
                _dropped("export_failed")
                >= dropped + 4
            ):
                break
            await asyncio.sleep(0.05)
        assert (
            _dropped("export_failed")
            == dropped + 4
        )
        await asyncio.wait_for(policy.close(), 10)

    asyncio.run(scenario())


def test_exported_counter_counts_accepted_spans() -> None:
    async def scenario() -> None:
        before = _metric("sidemesh_tracing_spans_exported_total", ZIPKIN)
        async with zipkin_receiver() as (receiver, url):
            policy = make_policy(
                {"zipkin": {"endpoint": url, "batch_size": 2, "flush_interval": "10s"}}
            )
            run_request(policy, make_request([]), [200])
            # A full batch goes out without waiting for the flush interval.
            await asyncio.wait_for(_until(receiver, 2), 10)
            await policy.close()
        assert _metric("sidemesh_tracing_spans_exported_total", ZIPKIN) == before + 2

    asyncio.run(scenario())


def test_a_dead_collector_is_tried_again_only_after_a_back_off() -> None:
    async def scenario() -> None:
        attempts: list[int] = []

        async def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            attempts.append(1)
            writer.close()  # accepted and dropped: every POST fails

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dropped = _dropped("export_failed")
        policy = make_policy(
            {
                "zipkin": {
                    "endpoint": f"http://127.0.0.1:{port}",
                    "batch_size": 2,
                    "flush_interval": "10ms",
                }
            }
        )
        for _ in range(10):
            run_request(policy, make_request([]), [200])
            await asyncio.sleep(0.02)
        for _ in range(200):
            if (
                _dropped("export_failed")
                >= dropped + 20
            ):
                break
            await asyncio.sleep(0.02)
        # 20 spans dropped and counted, but the collector was contacted once (a few
        # at most, if the back-off of 0.5 s ran out on a slow machine), not per batch.
        assert (
            _dropped("export_failed")
            == dropped + 20
        )
        assert 1 <= len(attempts) <= 2, attempts
        await asyncio.wait_for(policy.close(), 10)
        server.close()

    asyncio.run(scenario())
