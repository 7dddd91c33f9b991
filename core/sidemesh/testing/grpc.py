"""A real gRPC server and client for tests (needs ``grpcio``), without protobuf code
generation: messages are raw bytes, so a test needs no ``.proto`` file.

    with GrpcServer(name="v1") as server, GrpcClient(sidecar_address) as client:
        assert client.unary("Unary", b"hi") == b"hi"

The service ``sidemesh.test.Echo`` has one method per kind of call a mesh must carry:

- ``Unary``: answers the request as it came;
- ``ServerStream``: the request is a decimal count n; answers ``b"0"`` .. ``b"n-1"``;
- ``ClientStream``: answers the requests concatenated;
- ``Bidi``: answers each request as it comes;
- ``Sleep``: the request is a decimal number of milliseconds to wait before answering
  ``b"slept"`` (stops early when the call is cancelled or its deadline passes);
- ``Flaky``: the request is ``b"<n>:<key>"``; the first n calls with that key fail
  UNAVAILABLE, the next ones answer ``b"ok"``;
- ``Big``: the request is a decimal size; answers :func:`payload` of that size;
- ``Whoami``: answers the server's ``name`` (which server a split sent the call to).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc  # type: ignore[import-untyped]
import h2.config
import h2.connection
import h2.events

__all__ = ["SERVICE", "GrpcClient", "GrpcServer", "SeenCall", "h2_call", "method", "payload"]

SERVICE = "sidemesh.test.Echo"
#: the largest message either side sends or accepts (gRPC's default is 4 MiB).
MAX_MESSAGE = 64 * 1024 * 1024
CALL_TIMEOUT = 10.0
STOP_GRACE = 1.0
#: how often a sleeping call looks whether it was cancelled.
_SLEEP_STEP = 0.01
_PATTERN = bytes(range(256))


def method(name: str) -> str:
    """The HTTP/2 path of the test service's method ``name`` (``/package.Service/Method``)."""
    return f"/{SERVICE}/{name}"


def payload(size: int) -> bytes:
    """``size`` bytes any reader can check without keeping a copy of them."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


@dataclass(frozen=True)
class SeenCall:
    """One call as the server received it: its method, request metadata (the HTTP/2
    headers that reached it, lower-case) and the time it had left when it started."""

    method: str
    metadata: dict[str, str]
    time_remaining: float | None


def _channel_options(max_message: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
    ]


class GrpcServer:
    """``sidemesh.test.Echo`` on a free port of 127.0.0.1, its handlers on a thread pool;
    a context manager. Every call is recorded in :attr:`calls`."""

    def __init__(self, name: str = "grpc", workers: int = 32, max_message: int = MAX_MESSAGE):
        self.name = name
        self.calls: list[SeenCall] = []
        #: calls that ended because their client went away or their deadline passed.
        self.cancelled: list[str] = []
        self._flaky: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"grpc-{name}"),
            options=[*_channel_options(max_message), ("grpc.so_reuseport", 0)],
        )
        self._server.add_generic_rpc_handlers((self._handler(),))
        self.port: int = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(STOP_GRACE).wait(STOP_GRACE + 5)

    def calls_to(self, name: str) -> list[SeenCall]:
        return [c for c in self.calls if c.method == method(name)]

    def _handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": unary(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Sleep": unary(self._sleep),
            "Flaky": unary(self._flaky_call),
            "Big": unary(self._big),
            "Whoami": unary(self._whoami),
        })  # fmt: skip

    def _seen(self, name: str, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        call = SeenCall(method(name), metadata, context.time_remaining())
        with self._lock:
            self.calls.append(call)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen("Unary", context)
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen("ServerStream", context)
        for i in range(int(request)):
            yield str(i).encode()

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._seen("ClientStream", context)
        return b"".join(requests)

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen("Bidi", context)
        yield from requests

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen("Sleep", context)
        until = time.monotonic() + int(request) / 1000
        while time.monotonic() < until:
            if not context.is_active():
                with self._lock:
                    self.cancelled.append(method("Sleep"))
                return b""
            time.sleep(_SLEEP_STEP)
        return b"slept"

    def _flaky_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen("Flaky", context)
        failures, _, key = request.decode().partition(":")
        with self._lock:
            self._flaky[key] += 1
            seen = self._flaky[key]
        if seen <= int(failures):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: failure {seen} of {key}")
        return b"ok"

    def attempts(self, key: str) -> int:
        """How many ``Flaky`` calls with ``key`` reached this server."""
        with self._lock:
            return self._flaky[key]

    def _big(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen("Big", context)
        return payload(int(request))

    def _whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen("Whoami", context)
        return self.name.encode()


class GrpcClient:
    """A channel to ``target`` (``host:port``, no TLS) calling ``sidemesh.test.Echo``;
    a context manager. gRPC's own retries are off: a test sees what the mesh did."""

    def __init__(self, target: str, max_message: int = MAX_MESSAGE) -> None:
        options = [*_channel_options(max_message), ("grpc.enable_retries", 0),
                   ("grpc.enable_http_proxy", 0)]  # fmt: skip
        self.channel = grpc.insecure_channel(target, options=options)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def unary(
        self, name: str, request: bytes, timeout: float = CALL_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bytes:  # fmt: skip
        """One unary call; a failure raises :class:`grpc.RpcError` (``.code()``)."""
        answer, _ = self.unary_call(name, request, timeout, metadata)
        return answer

    def unary_call(
        self, name: str, request: bytes, timeout: float = CALL_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[bytes, grpc.Call]:  # fmt: skip
        """One unary call, with its ``grpc.Call`` (headers and trailers the client got)."""
        stub = self.channel.unary_unary(method(name))
        answer, call = stub.with_call(request, timeout=timeout, metadata=list(metadata))
        return bytes(answer), call

    def server_stream(
        self, name: str, request: bytes, timeout: float = CALL_TIMEOUT
    ) -> list[bytes]:
        stub = self.channel.unary_stream(method(name))
        return [bytes(m) for m in stub(request, timeout=timeout)]

    def client_stream(
        self, name: str, requests: Iterable[bytes], timeout: float = CALL_TIMEOUT
    ) -> bytes:
        stub = self.channel.stream_unary(method(name))
        return bytes(stub(iter(requests), timeout=timeout))

    def bidi(
        self, name: str, requests: Iterable[bytes], timeout: float = CALL_TIMEOUT
    ) -> list[bytes]:
        stub = self.channel.stream_stream(method(name))
        return [bytes(m) for m in stub(iter(requests), timeout=timeout)]


def h2_call(
    port: int, name: str, request: bytes, metadata: Sequence[tuple[str, str]] = (),
    timeout: float = CALL_TIMEOUT,
) -> dict[str, str]:  # fmt: skip
    """One unary call to 127.0.0.1:``port`` made with the ``h2`` library, which keeps no
    deadline of its own (grpcio ends a call at its deadline itself, whatever the proxy
    does): the response's headers and trailers, merged. ``metadata`` may carry
    ``grpc-timeout``; ``timeout`` bounds each read."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    conn.initiate_connection()
    fields: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn.send_headers(1, [
            (":method", "POST"), (":scheme", "http"), (":path", method(name)),
            (":authority", "echo"), ("content-type", "application/grpc"), ("te", "trailers"),
            *metadata,
        ])  # fmt: skip
        conn.send_data(1, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended and (data := sock.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update((str(k), str(v)) for k, v in event.headers or ())
                ended = ended or isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
            sock.sendall(conn.data_to_send())
    return fields
