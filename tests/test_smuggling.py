"""Request smuggling (issue 13, finding 1), as a property: whatever framing a client
sends on one connection, the requests an upstream parses are exactly the requests the
proxy logged as forwarded, with exactly their bodies, on pooled keep-alive connections
to an upstream that answers before it reads the body.

The upstream parses with h11, a parser independent of the proxy's (llhttp)."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidemesh import testing


@dataclass
class Seen:
    method: str
    target: str
    body: bytes = b""


@dataclass
class EarlyUpstream:
    """Answers each request as soon as its head arrives, then reads the body."""

    sock: socket.socket = field(default_factory=socket.socket)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        parser = h11.Connection(h11.SERVER)
        current: Seen | None = None
        try:
            while self.running:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    parser.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    current = Seen(event.method.decode(), event.target.decode())
                    with self.lock:
                        self.seen.append(current)
                    answer = h11.Response(status_code=200, headers=[("content-length", "2")])
                    conn.sendall(parser.send(answer) + parser.send(h11.Data(data=b"ok")))
                    conn.sendall(parser.send(h11.EndOfMessage()))
                elif isinstance(event, h11.Data) and current is not None:
                    current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    parser.start_next_cycle()
                    current = None
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.ProtocolError, OSError):
            return
        finally:
            conn.close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[EarlyUpstream, testing.RunningSidecar, io.StringIO]]:
    upstream = EarlyUpstream()
    upstream.start()
    try:
        with testing.running_sidecar(testing.simple_config(upstream.address)) as sc:
            log = io.StringIO()
            sc.log_to(log)
            yield upstream, sc, log
    finally:
        upstream.stop()


BODY = st.binary(min_size=1, max_size=40).filter(lambda b: b"\r\n" not in b)
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: inner\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, bytes]:
    """One request's bytes, its path and the body a correct proxy forwards."""
    path = f"/r{draw(st.integers(0, 99))}"
    kind = draw(st.sampled_from(
        ["plain", "length", "chunked", "upgrade", "upgrade-length", "upgrade-chunked",
         "smuggle-length", "connection-length", "expect"]
    ))
    body = SMUGGLED if kind == "smuggle-length" else draw(BODY)
    head = f"POST {path} HTTP/1.1\r\nHost: svc\r\n".encode()
    if kind == "plain":
        return f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode(), path, b""
    if kind in ("chunked", "upgrade-chunked"):
        upgrade = b"Upgrade: websocket\r\nConnection: upgrade\r\n" if kind != "chunked" else b""
        encoded = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        return head + upgrade + b"Transfer-Encoding: chunked\r\n\r\n" + encoded, path, body
    if kind == "upgrade":
        return (f"GET {path} HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                "Connection: upgrade\r\n\r\n").encode(), path, b""
    extra = {
        "length": b"",
        "upgrade-length": b"Upgrade: websocket\r\nConnection: upgrade\r\n",
        "smuggle-length": b"Upgrade: h2c\r\nConnection: upgrade\r\n",
        "connection-length": b"Connection: content-length\r\n",
        "expect": b"Expect: 100-continue\r\n",
    }[kind]
    length = b"Content-Length: %d\r\n" % len(body)
    return head + extra + length + b"\r\n" + body, path, body


def _exchange(sc: testing.RunningSidecar, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", sc.port("main")), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=st.lists(requests(), min_size=1, max_size=4))
def test_the_upstream_parses_exactly_what_the_proxy_logged(
    proxy: tuple[EarlyUpstream, testing.RunningSidecar, io.StringIO],
    sequence: list[tuple[bytes, str, bytes]],
) -> None:
    upstream, sc, log = proxy
    with upstream.lock:
        upstream.seen.clear()
    log.seek(0)
    log.truncate()
    _exchange(sc, b"".join(raw for raw, _, _ in sequence))

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.getvalue().splitlines()]

    def bodies_arrived() -> bool:
        with upstream.lock:
            return [s.body for s in upstream.seen] == [b for _, _, b in sequence][
                : len(upstream.seen)
            ]

    # Every request the proxy forwarded is logged once its exchange is over; the early
    # answer comes before the upstream has read the body, so that may take a moment.
    assert testing.wait_for(lambda: len(logged()) >= len(upstream.seen), timeout=5)
    assert testing.wait_for(bodies_arrived, timeout=5)
    forwarded = [(e["method"], e["path"]) for e in logged() if e["upstream"]]
    with upstream.lock:
        parsed = [(s.method, s.target) for s in upstream.seen]
    assert parsed == forwarded
    # The proxy stops at the first request it refuses: what it forwarded is a prefix.
    assert [path for _, path in parsed] == [path for _, path, _ in sequence][: len(parsed)]
