"""WebSocket (and other upgrades) through the proxy, route key ``upgrades``: a real
``websockets`` client and echo server through two sidecars with mTLS between them, the
idle timeout, and what a hostile client or upstream may try (raw sockets)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sidemesh import testing

IO_TIMEOUT = 5.0
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: chat\r\n\r\n"
needs_mtls = pytest.mark.skipif(
    not testing.installed("mtls"), reason="the mtls plugin is not installed"
)


# servers --------------------------------------------------------------------------------
class EchoServer:
    """A ``websockets`` echo server on its own loop; records each handshake's headers and
    each connection's close code."""

    def __init__(self) -> None:
        self.bg = testing.BackgroundLoop()
        self.port = testing.free_port()
        self.handshakes: list[dict[str, str]] = []
        self.close_codes: list[int | None] = []

    async def _echo(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        with suppress(ConnectionClosed):  # closed without a close frame: by the idle timeout
            async for message in ws:
                await ws.send(message)
        self.close_codes.append(ws.close_code)

    async def _start(self) -> Any:
        return await serve(self._echo, "127.0.0.1", self.port, ping_interval=None, max_size=None)

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def __enter__(self) -> EchoServer:
        self.server = self.bg.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.bg.run(self._stop(), timeout=IO_TIMEOUT)
        self.bg.close()


class ScriptedUpstream:
    """A raw TCP upstream for one connection: reads a request head, waits ``delay``,
    writes ``answer``, then records what follows until the peer closes."""

    def __init__(self, answer: bytes, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.head = b""
        #: bytes after the head that arrived before the answer went out, and after.
        self.before = b""
        self.after = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(IO_TIMEOUT)
            data = b""
            try:
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                self.head, _, self.before = data.partition(b"\r\n\r\n")
                time.sleep(self.delay)
                conn.setblocking(False)
                with suppress(BlockingIOError):
                    self.before += conn.recv(65536)
                conn.settimeout(IO_TIMEOUT)
                conn.sendall(self.answer)
                while chunk := conn.recv(65536):
                    self.after += chunk
            except OSError:
                pass

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self._thread.join(IO_TIMEOUT * 2)


# sidecars --------------------------------------------------------------------------------
def _config(upstream: str, upgrades: list[str] | None, **listener: Any) -> dict[str, Any]:
    doc = testing.simple_config(upstream)
    doc["listeners"][0].update(listener)
    if upgrades is not None:
        doc["listeners"][0]["routes"][0]["upgrades"] = upgrades
    return doc


@contextmanager
def proxy(
    upstream: str, upgrades: list[str] | None = None, **listener: Any
) -> Iterator[tuple[testing.RunningSidecar, io.StringIO]]:
    with testing.running_sidecar(_config(upstream, upgrades, **listener)) as sc:
        log = io.StringIO()
        sc.log_to(log)
        yield sc, log


def _svid(ca: Any, directory: Path, service: str) -> dict[str, str]:
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


@contextmanager
def mesh(directory: Path, app: str) -> Iterator[tuple[int, io.StringIO, io.StringIO]]:
    """client -> chat-client's sidecar =mTLS=> chat's sidecar -> app; yields the
    outbound port and both access logs."""
    ca = testing.control.CertificateAuthority.open(directory / "ca", "cluster.local")
    (directory / "bundle.pem").write_bytes(ca.trust_bundle_pem())
    route = {"name": "chat", "match": {"prefix": "/"}, "upgrades": ["websocket"]}
    inbound_doc = {
        "node": {"service": "chat"},
        "clusters": [{"name": "local", "endpoints": [{"address": app}]}],
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "routes": [{**route, "cluster": "local"}],
            "plugins": [{"name": "mtls", "config": _svid(ca, directory, "chat")}],
        }],
    }  # fmt: skip
    with ExitStack() as stack:
        inbound = stack.enter_context(testing.running_sidecar(inbound_doc))
        mtls = {"expect": "spiffe://cluster.local/ns/default/sa/chat",
                **_svid(ca, directory, "web")}  # fmt: skip
        outbound_doc = {
            "node": {"service": "web"},
            "clusters": [{"name": "chat", "endpoints": [
                {"address": f"127.0.0.1:{inbound.port('inbound')}"}]}],
            "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "routes": [
                {**route, "cluster": "chat", "plugins": [{"name": "mtls", "config": mtls}]}]}],
        }  # fmt: skip
        outbound = stack.enter_context(testing.running_sidecar(outbound_doc))
        logs = io.StringIO(), io.StringIO()
        outbound.log_to(logs[0])
        inbound.log_to(logs[1])
        yield outbound.port("outbound"), *logs


def _entries(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data and (chunk := sock.recv(65536)):
        data += chunk
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


# a real WebSocket through the mesh ---------------------------------------------------------
@needs_mtls
def test_websocket_through_two_sidecars_with_mtls(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)  # incompressible, past every socket buffer: flow control
    with EchoServer() as app, mesh(tmp_path, f"127.0.0.1:{app.port}") as (port, out, inb):
        with connect(
            f"ws://127.0.0.1:{port}/chat", open_timeout=IO_TIMEOUT, close_timeout=IO_TIMEOUT,
            ping_interval=None, max_size=None,
        ) as ws:  # fmt: skip
            ws.send("hello, mesh")
            assert ws.recv(timeout=IO_TIMEOUT) == "hello, mesh"
            ws.send(b"\x00\xff binary")
            assert ws.recv(timeout=IO_TIMEOUT) == b"\x00\xff binary"
            assert ws.ping(b"are you there").wait(IO_TIMEOUT)
            ws.send(big)
            assert ws.recv(timeout=30) == big
            time.sleep(0.2)
            assert out.getvalue() == inb.getvalue() == ""  # logged when the tunnel ends
        assert ws.close_code == 1000
        assert testing.wait_for(lambda: app.close_codes == [1000])
        assert app.handshakes[0]["upgrade"] == "websocket"
        assert testing.wait_for(
            lambda: out.getvalue().count("\n") == inb.getvalue().count("\n") == 1
        )
        for entry in (*_entries(out), *_entries(inb)):
            assert entry["status"] == 101, entry
            assert entry["response_flags"] == "-"
            assert entry["bytes_received"] > len(big)
            assert entry["bytes_sent"] > len(big)
        labels = {"listener": "outbound", "route": "chat", "cluster": "chat", "code": "101"}
        assert REGISTRY.get_sample_value("sidemesh_requests_total", labels) == 1


def test_idle_timeout_closes_a_silent_tunnel() -> None:
    with (
        EchoServer() as app,
        proxy(f"127.0.0.1:{app.port}", ["websocket"], idle_timeout="1s") as (
            sc,
            log,
        ),
    ):
        with connect(
            f"ws://127.0.0.1:{sc.port('main')}/", open_timeout=IO_TIMEOUT, ping_interval=None
        ) as ws:
            # Traffic keeps it open past the timeout...
            for _ in range(5):
                time.sleep(0.25)
                # Taken before the tunnel's last bytes pass, so that the time to the
                # close cannot look shorter than the timeout on a slow machine.
                last = time.monotonic()
                ws.send("tick")
                assert ws.recv(timeout=IO_TIMEOUT) == "tick"
            # ...silence ends it.
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=IO_TIMEOUT)
            assert 0.9 < time.monotonic() - last < 4
        assert testing.wait_for(lambda: log.getvalue().endswith("\n"))
        (entry,) = _entries(log)
        assert entry["status"] == 101
        assert entry["duration_ms"] > 1500


def test_bytes_sent_before_the_101_wait_for_it() -> None:
    with (
        ScriptedUpstream(SWITCH + b"server first", delay=0.3) as up,
        proxy(up.address, ["WebSocket"]) as (sc, log),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(UPGRADE + b"early bytes")
        answer = _read_until(sock, b"server first")
        assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"upgrade: websocket\r\n" in answer.lower()
        assert b"connection: upgrade\r\n" in answer.lower()
        sock.sendall(b" and late ones")
        assert testing.wait_for(lambda: up.after == b"early bytes and late ones")
        assert up.before == b""  # nothing of the tunnel before the 101
        head = up.head.lower()
        assert b"\r\nupgrade: websocket" in head and b"\r\nconnection: upgrade" in head
        sock.shutdown(socket.SHUT_WR)
        assert _read_until_closed(sock) == b""
    assert testing.wait_for(lambda: log.getvalue().endswith("\n"))
    (entry,) = _entries(log)
    assert entry["status"] == 101
    assert entry["bytes_received"] == len(b"early bytes and late ones")
    assert entry["bytes_sent"] == len(b"server first")


def test_a_slow_reader_holds_back_the_upstream() -> None:
    blob = os.urandom(16 * 1024 * 1024)
    with (
        ScriptedUpstream(SWITCH + blob) as up,
        proxy(up.address, ["websocket"]) as (sc, _),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(UPGRADE)
        head, _, body = _read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")
        time.sleep(1.0)  # not reading: the proxy must stop reading the upstream too
        (conn,) = sc.sidecar.connections
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 1024 * 1024
        while len(body) < len(blob) and (chunk := sock.recv(1 << 20)):
            body += chunk
        assert _status(head) == 101 and body == blob


def test_a_route_without_upgrades_strips_upgrade_and_goes_on_as_http() -> None:
    with (
        testing.Upstream() as up,
        proxy(up.address) as (sc, _),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(UPGRADE + b"GET /next HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n")
        answers = _read_until_closed(sock)
        assert answers.count(b"HTTP/1.1 200 ") == 2
        assert [r.path for r in up.requests] == ["/chat", "/next"]
        assert "upgrade" not in up.requests[0].headers
        assert "connection" not in up.requests[0].headers


def test_an_upgrade_without_a_route_gets_404_and_the_connection_goes_on() -> None:
    doc = _config("127.0.0.1:9", ["websocket"])
    doc["listeners"][0]["routes"][0]["match"] = {"prefix": "/elsewhere"}
    with (
        testing.running_sidecar(doc) as sc,
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(UPGRADE + b"GET /nowhere HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(sock).count(b"HTTP/1.1 404 ") == 2


def test_an_upgrade_with_a_body_is_still_refused() -> None:
    with testing.Upstream() as up, proxy(up.address, ["websocket"]) as (sc, _):
        request = UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
        answer = testing.raw_exchange(sc.port("main"), request)
        assert _status(answer) == 400
        assert up.requests == []


# a hostile upstream or client ------------------------------------------------------------
@pytest.mark.parametrize("upgrades", [None, ["websocket"]], ids=["plain-route", "ws-route"])
@pytest.mark.parametrize(
    "switch", [SWITCH, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], ids=["named", "bare"]
)
def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502(
    upgrades: list[str] | None, switch: bytes
) -> None:
    with (
        ScriptedUpstream(switch + b"raw upstream bytes") as up,
        proxy(up.address, upgrades) as (sc, log),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: chat\r\n\r\n")
        answer = _read_until(sock, b"\r\n\r\n")
        assert _status(answer) == 502, answer
        sock.sendall(b"client bytes for a tunnel")
        sock.shutdown(socket.SHUT_WR)
        answer += _read_until_closed(sock)
        assert b"raw upstream bytes" not in answer
    assert b"client bytes" not in up.after
    assert testing.wait_for(lambda: "UPE" in log.getvalue())
    assert _entries(log)[0]["status"] == 502


def test_a_101_to_an_upgrade_the_route_does_not_allow_is_a_502() -> None:
    with (
        ScriptedUpstream(SWITCH + b"raw upstream bytes") as up,
        proxy(up.address, ["h2c"]) as (sc, log),
    ):
        answer = testing.raw_exchange(sc.port("main"), UPGRADE + b"client bytes")
        assert _status(answer) == 502, answer
        assert b"raw upstream bytes" not in answer
        assert b"upgrade:" not in up.head.lower()  # the upgrade was never offered
    assert up.after == up.before == b""
    assert testing.wait_for(lambda: "UPE" in log.getvalue())


def test_a_101_to_another_protocol_than_offered_is_a_502() -> None:
    answer_101 = SWITCH.replace(b"Upgrade: websocket", b"Upgrade: h2c")
    with (
        ScriptedUpstream(answer_101 + b"raw upstream bytes") as up,
        proxy(up.address, ["websocket"]) as (sc, _),
    ):
        answer = testing.raw_exchange(sc.port("main"), UPGRADE + b"client bytes")
        assert _status(answer) == 502, answer
        assert b"raw upstream bytes" not in answer
    assert up.after == up.before == b""


def test_a_200_to_an_upgrade_opens_no_tunnel_and_the_next_bytes_are_dropped() -> None:
    # WebSocket smuggling: a client draws a non-101 answer and hopes the proxy passes
    # what follows to the upstream as it is, past routing and policies.
    with (
        ScriptedUpstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok") as up,
        proxy(up.address, ["websocket"]) as (sc, _),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(UPGRADE + SMUGGLED)
        answer = _read_until_closed(sock)  # closed by the proxy after the answer
        assert _status(answer) == 200, answer
        assert answer.count(b"HTTP/1.1 ") == 1
        assert b"connection: close" in answer.lower()
    assert up.head.startswith(b"GET /chat ")
    assert up.before == up.after == b""
