"""gRPC through the mesh (issue 14): a real ``grpcio`` client and server through two
sidecars with mTLS between them, the client's sidecar speaking h2c to the app and
HTTP/2 over mTLS (ALPN h2) to the server's sidecar:

    grpc client -> outbound (h2c) =HTTP/2 + mTLS=> inbound -> h2c -> grpc server

Every kind of call, deadlines (the client's and the proxy's own), retries on
UNAVAILABLE, an 8 MiB message through small flow-control windows, route matching on
``/package.Service/Method``, a 90/10 split and tracing."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidemesh import testing
from sidemesh.testing.grpc import GrpcClient, GrpcServer, h2_call, method, payload

IO_TIMEOUT = 5.0
TD = "cluster.local"
pytestmark = pytest.mark.skipif(
    not testing.installed("mtls"), reason="the mtls plugin is not installed"
)


# the mesh --------------------------------------------------------------------------------
@dataclass
class Mesh:
    outbound: testing.RunningSidecar
    inbound: testing.RunningSidecar
    logs: tuple[io.StringIO, io.StringIO]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.outbound.port('outbound')}"

    def entries(self, side: int) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs[side].getvalue().splitlines()]


@contextmanager
def mesh(
    directory: Path,
    apps: Sequence[str],
    routes: Sequence[dict[str, Any]] = ({"name": "echo", "match": {"prefix": "/"}},),
    route_plugins: Sequence[dict[str, Any]] = (),
    listener_plugins: Sequence[dict[str, Any]] = (),
    http2: dict[str, int] | None = None,
) -> Iterator[Mesh]:
    """The server's sidecar has one mTLS listener ``in<i>`` per gRPC server ``apps[i]``;
    the client's sidecar has clusters ``app<i>`` (listener ``in<i>``) and ``echo`` (all of
    them, subsets ``v1``, ``v2``... by index), every one ``protocol: http2``. ``routes``
    are the client's sidecar's (cluster ``echo`` unless they say), each with the mtls
    plugin and ``route_plugins``; ``listener_plugins`` and ``http2`` go on every listener."""
    ca = testing.control.CertificateAuthority.open(directory / "ca", TD)
    http2 = http2 or {}
    server_files = testing.control.svid_files(ca, directory, "echo")
    inbound_doc = {
        "node": {"service": "echo", "namespace": "default", "trust_domain": TD},
        "clusters": [
            {"name": f"local{i}", "protocol": "http2", "endpoints": [{"address": app}]}
            for i, app in enumerate(apps)
        ],
        "listeners": [{
            "name": f"in{i}", "address": "127.0.0.1:0", "http2": http2,
            "plugins": [{"name": "mtls", "config": server_files}, *listener_plugins],
            "routes": [{"name": "local", "match": {"prefix": "/"}, "cluster": f"local{i}"}],
        } for i in range(len(apps))],
    }  # fmt: skip
    with ExitStack() as stack:
        inbound = stack.enter_context(testing.running_sidecar(inbound_doc))
        ends = [f"127.0.0.1:{inbound.port(f'in{i}')}" for i in range(len(apps))]
        mtls = {
            "expect": f"spiffe://{TD}/ns/default/sa/echo",
            **testing.control.svid_files(ca, directory, "web"),
        }
        outbound_doc = {
            "node": {"service": "web", "namespace": "default", "trust_domain": TD},
            "clusters": [
                {"name": "echo", "protocol": "http2",
                 "endpoints": [{"address": e, "labels": {"version": f"v{i + 1}"}}
                               for i, e in enumerate(ends)],
                 "subsets": [{"name": f"v{i + 1}", "labels": {"version": f"v{i + 1}"}}
                             for i in range(len(ends))]},
                *({"name": f"app{i}", "protocol": "http2", "endpoints": [{"address": e}]}
                  for i, e in enumerate(ends)),
            ],
            "listeners": [{
                "name": "outbound", "address": "127.0.0.1:0", "http2": http2,
                "plugins": list(listener_plugins),
                "routes": [{"cluster": "echo", **route, "plugins": [
                    {"name": "mtls", "config": mtls}, *route_plugins]} for route in routes],
            }],
        }  # fmt: skip
        outbound = stack.enter_context(testing.running_sidecar(outbound_doc))
        logs = io.StringIO(), io.StringIO()
        outbound.log_to(logs[0])
        inbound.log_to(logs[1])
        yield Mesh(outbound, inbound, logs)


@pytest.fixture
def server() -> Iterator[GrpcServer]:
    with GrpcServer(name="echo") as running:
        yield running


@pytest.fixture
def through(tmp_path: Path, server: GrpcServer) -> Iterator[tuple[GrpcClient, Mesh]]:
    with mesh(tmp_path, [server.address]) as m, GrpcClient(m.target) as client:
        yield client, m


# every kind of call ----------------------------------------------------------------------
def test_unary_call_and_its_metadata(through: tuple[GrpcClient, Mesh], server: GrpcServer) -> None:
    client, m = through
    answer, call = client.unary_call("Unary", b"hello, mesh", metadata=[("x-user", "alice")])
    assert answer == b"hello, mesh"
    assert call.code() == grpc.StatusCode.OK
    (seen,) = server.calls_to("Unary")
    assert seen.metadata["x-user"] == "alice"
    assert testing.wait_for(lambda: len(m.entries(0)) == len(m.entries(1)) == 1)
    for entry in (*m.entries(0), *m.entries(1)):
        assert entry["status"] == 200
        assert entry["grpc_status"] == 0, entry


def test_an_error_status_of_the_server_reaches_the_client(
    through: tuple[GrpcClient, Mesh], server: GrpcServer
) -> None:
    # grpcio answers an error with a trailers-only response: one HEADERS frame, ended.
    client, m = through
    with pytest.raises(grpc.RpcError) as failure:
        client.unary("Flaky", b"1:once")
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "echo: failure 1 of once"
    assert server.attempts("once") == 1
    assert testing.wait_for(lambda: len(m.entries(0)) == 1)
    assert m.entries(0)[0]["grpc_status"] == 14


def test_server_streaming(through: tuple[GrpcClient, Mesh]) -> None:
    client, _ = through
    assert client.server_stream("ServerStream", b"100") == [str(i).encode() for i in range(100)]


def test_client_streaming(through: tuple[GrpcClient, Mesh]) -> None:
    client, _ = through
    parts = [f"part {i};".encode() for i in range(200)]
    assert client.client_stream("ClientStream", parts) == b"".join(parts)


def test_bidi_streaming_answers_each_message_as_it_comes(through: tuple[GrpcClient, Mesh]) -> None:
    client, _ = through
    stub = client.channel.stream_stream(method("Bidi"))
    sent: list[bytes] = []
    ready = threading.Event()

    def requests() -> Iterator[bytes]:
        # Each message goes only after the previous one came back: a proxy that held
        # the stream's messages until the end would hang here.
        for i in range(20):
            sent.append(f"ping {i}".encode())
            yield sent[-1]
            assert ready.wait(IO_TIMEOUT)
            ready.clear()

    answers = []
    for answer in stub(requests(), timeout=IO_TIMEOUT * 2):
        answers.append(bytes(answer))
        ready.set()
    assert answers == sent and len(answers) == 20


# deadlines -------------------------------------------------------------------------------
def test_a_deadline_that_expires(through: tuple[GrpcClient, Mesh], server: GrpcServer) -> None:
    client, _ = through
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        client.unary("Sleep", b"2000", timeout=0.3)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    # The deadline went along (grpc-timeout), and the server's call was cancelled.
    # gRPC sends the timeout in whole milliseconds, rounded up, and each side reads its
    # own clock: the server may see a hair over 0.3 s (it saw 0.30019 once in CI).
    (seen,) = server.calls_to("Sleep")
    assert seen.time_remaining is not None and seen.time_remaining <= 0.3 + 0.01
    assert testing.wait_for(lambda: server.cancelled == [method("Sleep")], timeout=3)
    # The channel goes on serving after a cancelled stream.
    assert client.unary("Unary", b"after") == b"after"


class _Blackhole:
    """A TCP server that accepts connections and reads them, never answering."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        held = []
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            held.append(conn)
        for conn in held:
            conn.close()

    def __enter__(self) -> _Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT)
        self.listener.close()


def test_the_proxy_enforces_grpc_timeout_itself() -> None:
    # The upstream never answers and the client sets no deadline of its own: only the
    # proxy, reading grpc-timeout, can end the call (route timeout 15s).
    with ExitStack() as stack:
        hole = stack.enter_context(_Blackhole())
        doc = testing.simple_config(hole.address)
        doc["clusters"][0]["protocol"] = "http2"
        sc = stack.enter_context(testing.running_sidecar(doc))
        log = io.StringIO()
        sc.log_to(log)
        started = time.monotonic()
        fields = h2_call(sc.port("main"), "Sleep", b"9000", [("grpc-timeout", "300m")])
        took = time.monotonic() - started
        assert 0.25 < took < 2, took
        assert fields.get(":status") == "200", fields
        assert fields.get("grpc-status") == "4", fields  # DEADLINE_EXCEEDED
        assert testing.wait_for(lambda: log.getvalue().endswith("\n"))
        entry = json.loads(log.getvalue().splitlines()[0])
        assert entry["response_flags"] == "UT" and entry["grpc_status"] == 4, entry


# retries ---------------------------------------------------------------------------------
RETRY = {"name": "retry", "config": {"attempts": 3, "retry_on": ["unavailable"],
                                     "base_interval": "5ms"}}  # fmt: skip


def test_retries_on_unavailable_succeed(tmp_path: Path, server: GrpcServer) -> None:
    with (
        mesh(tmp_path, [server.address], route_plugins=[RETRY]) as m,
        GrpcClient(m.target) as client,
    ):
        assert client.unary("Flaky", b"2:first") == b"ok"
        assert server.attempts("first") == 3
        assert testing.wait_for(lambda: len(m.entries(0)) == 1)
        assert m.entries(0)[0]["attempts"] == 3 and m.entries(0)[0]["grpc_status"] == 0


def test_retries_exhausted_give_the_client_the_servers_status(
    tmp_path: Path, server: GrpcServer
) -> None:
    with (
        mesh(tmp_path, [server.address], route_plugins=[RETRY]) as m,
        GrpcClient(m.target) as client,
    ):
        with pytest.raises(grpc.RpcError) as failure:
            client.unary("Flaky", b"9:second")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failure.value.details() == "echo: failure 4 of second"
        assert server.attempts("second") == 4
        assert testing.wait_for(lambda: len(m.entries(0)) == 1)
        assert m.entries(0)[0]["response_flags"] == "URX"


# a large message through small windows -----------------------------------------------------
def test_an_8_mib_message_each_way_through_small_flow_control_windows(
    tmp_path: Path, server: GrpcServer
) -> None:
    small = {"initial_stream_window_size": 65535, "initial_connection_window_size": 65535}
    size = 8 * 1024 * 1024
    with mesh(tmp_path, [server.address], http2=small) as m, GrpcClient(m.target) as client:
        big = payload(size)
        assert client.unary("Unary", big, timeout=30) == big
        assert client.unary("Big", str(size).encode(), timeout=30) == big
        assert testing.wait_for(lambda: len(m.entries(1)) == 2)
        assert m.entries(1)[0]["bytes_received"] > size
        assert m.entries(1)[1]["bytes_sent"] > size


# routes, split, tracing ------------------------------------------------------------------
def test_routes_match_package_service_and_method(tmp_path: Path) -> None:
    routes = [
        {"name": "whoami", "match": {"path": method("Whoami")}, "cluster": "app1"},
        {"name": "echo", "match": {"prefix": "/sidemesh.test.Echo/"}, "cluster": "app0"},
    ]
    with (
        GrpcServer(name="main") as main,
        GrpcServer(name="special") as special,
        mesh(tmp_path, [main.address, special.address], routes=routes) as m,
        GrpcClient(m.target) as client,
    ):
        assert client.unary("Whoami", b"") == b"special"
        assert client.unary("Unary", b"x") == b"x"
        assert [c.method for c in main.calls] == [method("Unary")]
        unknown = client.channel.unary_unary("/sidemesh.test.Other/Unary")
        with pytest.raises(grpc.RpcError) as failure:
            unknown(b"", timeout=IO_TIMEOUT)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED  # no route: 404


def test_split_90_10_on_a_grpc_route(tmp_path: Path) -> None:
    split = {"name": "split", "config": {"destinations": [
        {"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}}  # fmt: skip
    with (
        GrpcServer(name="v1") as v1,
        GrpcServer(name="v2") as v2,
        mesh(tmp_path, [v1.address, v2.address], route_plugins=[split]) as m,
        GrpcClient(m.target) as client,
    ):
        answers = Counter(client.unary("Whoami", b"").decode() for _ in range(200))
    assert sum(answers.values()) == 200 and set(answers) <= {"v1", "v2"}
    # Binomial(200, 0.1): mean 20, sd 4.2; this range holds but for 1 run in 10^5.
    assert 4 <= answers["v2"] <= 40, answers


def test_tracing_on_a_grpc_route(tmp_path: Path, server: GrpcServer) -> None:
    with testing.Upstream(lambda _: testing.Reply(202, b""), name="zipkin") as collector:
        tracing = {
            "name": "tracing",
            "config": {
                "zipkin": {"endpoint": f"http://{collector.address}", "flush_interval": "50ms"}
            },
        }
        with (
            mesh(tmp_path, [server.address], listener_plugins=[tracing]) as m,
            GrpcClient(m.target) as client,
        ):
            assert client.unary("Unary", b"traced") == b"traced"

            def spans() -> list[dict[str, Any]]:
                return [s for r in collector.requests for s in json.loads(r.body)]

            assert testing.wait_for(lambda: len(spans()) >= 4, timeout=10), spans()
    kinds = {(s["localEndpoint"]["serviceName"], s["kind"]): s for s in spans()}
    assert set(kinds) >= {("web", "SERVER"), ("web", "CLIENT"), ("echo", "SERVER"),
                          ("echo", "CLIENT")}  # fmt: skip
    assert len({s["traceId"] for s in spans()}) == 1
    assert kinds["echo", "SERVER"]["parentId"] == kinds["web", "CLIENT"]["id"]
    for span in kinds.values():
        assert span["tags"]["url.path"] == method("Unary"), span
    # The server got the context of the last span (its sidecar's client span).
    (seen,) = server.calls_to("Unary")
    assert kinds["echo", "CLIENT"]["id"] in seen.metadata.get("traceparent", ""), seen


def test_tracing_tags_the_grpc_status(tmp_path: Path, server: GrpcServer) -> None:
    with testing.Upstream(lambda _: testing.Reply(202, b""), name="zipkin") as collector:
        tracing = {
            "name": "tracing",
            "config": {
                "zipkin": {"endpoint": f"http://{collector.address}", "flush_interval": "50ms"}
            },
        }
        with (
            mesh(tmp_path, [server.address], listener_plugins=[tracing]) as m,
            GrpcClient(m.target) as client,
        ):
            with pytest.raises(grpc.RpcError):
                client.unary("Flaky", b"1:traced")

            def spans() -> list[dict[str, Any]]:
                return [s for r in collector.requests for s in json.loads(r.body)]

            assert testing.wait_for(lambda: len(spans()) >= 4, timeout=10), spans()
    # Envoy tags the downstream span and each upstream one (Zipkin tags are strings).
    tagged = {(s["localEndpoint"]["serviceName"], s["kind"]): s["tags"].get("grpc.status_code")
              for s in spans()}  # fmt: skip
    assert set(tagged.values()) == {"14"}, tagged
