"""HTTP/2 through the proxy (issue 14) with real clients: curl (h2c with prior knowledge,
and ALPN h2 over TLS), httpx, h2load; HTTP/2 clients to HTTP/1.1 upstreams and the
reverse, large bodies both ways, many streams on one connection; and what a hostile
client may try, with the ``h2`` library on a plain socket."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest

from sidemesh import testing

IO_TIMEOUT = 5.0
RUN_TIMEOUT = 60.0


def _echo(seen: testing.SeenRequest) -> testing.Reply:
    if seen.path == "/big":
        return testing.Reply(200, BIG)
    return testing.Reply(200, seen.body or seen.path.encode(), {"x-seen-version": "1.1"})


BIG = os.urandom(8 * 1024 * 1024)


def _entries(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


@contextmanager
def proxy(upstream: str, **listener: Any) -> Iterator[tuple[testing.RunningSidecar, io.StringIO]]:
    doc = testing.simple_config(upstream)
    doc["listeners"][0].update(listener)
    with testing.running_sidecar(doc) as sc:
        log = io.StringIO()
        sc.log_to(log)
        yield sc, log


@contextmanager
def chain(upstream: str) -> Iterator[tuple[int, io.StringIO, io.StringIO]]:
    """client -> A =HTTP/2 (cluster protocol: http2)=> B -> HTTP/1.1 upstream; yields A's
    port and both access logs."""
    with ExitStack() as stack:
        b, b_log = stack.enter_context(proxy(upstream))
        doc = testing.simple_config(f"127.0.0.1:{b.port('main')}")
        doc["clusters"][0]["protocol"] = "http2"
        a = stack.enter_context(testing.running_sidecar(doc))
        a_log = io.StringIO()
        a.log_to(a_log)
        yield a.port("main"), a_log, b_log


def _curl(*args: str) -> tuple[str, bytes]:
    """curl's ``http_version http_code`` line and the body it got."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", str(IO_TIMEOUT), "-w", "\n%{http_version} %{http_code}",
         *args], capture_output=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition(b"\n")
    assert done.returncode == 0, done.stderr
    return status.decode(), body


# real clients ----------------------------------------------------------------------------
def test_curl_h2c_with_prior_knowledge_and_http11_on_the_same_port() -> None:
    with testing.Upstream(_echo) as up, proxy(up.address) as (sc, log):
        url = sc.url("main") + "/hello"
        assert _curl("--http2-prior-knowledge", url) == ("2 200", b"/hello")
        assert _curl("--http1.1", url) == ("1.1 200", b"/hello")
        # The HTTP/1.1 upstream got HTTP/1.1 both times.
        assert all(r.raw.startswith(b"GET /hello HTTP/1.1\r\n") for r in up.requests)
        assert testing.wait_for(lambda: len(_entries(log)) == 2)
        assert [e["protocol"] for e in _entries(log)] == ["HTTP/2", "HTTP/1.1"]


@pytest.mark.skipif(not testing.installed("mtls"), reason="the mtls plugin is not installed")
def test_curl_http2_over_tls_by_alpn(tmp_path: Path) -> None:
    ca = testing.control.CertificateAuthority.open(tmp_path / "ca", "cluster.local")
    server = testing.control.svid_files(ca, tmp_path, "echo")
    client = testing.control.svid_files(ca, tmp_path, "web")
    mtls = [{"name": "mtls", "config": server}]
    with testing.Upstream(_echo) as up, proxy(up.address, plugins=mtls) as (sc, log):
        url = f"https://127.0.0.1:{sc.port('main')}/secure"
        # A SPIFFE certificate names no host: curl checks the chain but not the name.
        tls = ["--cacert", client["bundle_file"], "--cert", client["cert_file"],
               "--key", client["key_file"], "--insecure"]  # fmt: skip
        assert _curl("--http2", *tls, url) == ("2 200", b"/secure")
        assert _curl("--http1.1", *tls, url) == ("1.1 200", b"/secure")
        # Without a client certificate there is no HTTP at all.
        refused = subprocess.run(["curl", "-sS", "--max-time", str(IO_TIMEOUT), "--http2",
                                  "--insecure", url], capture_output=True,
                                 timeout=RUN_TIMEOUT, check=False)  # fmt: skip
        assert refused.returncode != 0
        assert len(up.requests) == 2
        assert testing.wait_for(lambda: len(_entries(log)) == 2)
        assert [e["protocol"] for e in _entries(log)] == ["HTTP/2", "HTTP/1.1"]


@pytest.mark.parametrize("client_http2", [True, False], ids=["h2-client", "h1-client"])
def test_several_mib_each_way_across_http_versions(client_http2: bool) -> None:
    # An HTTP/2 client to an HTTP/1.1 upstream, an HTTP/1.1 client to an HTTP/2 upstream
    # (sidecar B's listener), byte for byte both ways.
    body = os.urandom(6 * 1024 * 1024)
    with (
        testing.Upstream(_echo) as up,
        chain(up.address) as (port, a_log, b_log),
        httpx.Client(http2=client_http2, http1=not client_http2, timeout=30) as client,
    ):
        reply = client.post(f"http://127.0.0.1:{port}/upload", content=body)
        assert reply.http_version == ("HTTP/2" if client_http2 else "HTTP/1.1")
        assert reply.status_code == 200 and reply.content == body
        got = client.get(f"http://127.0.0.1:{port}/big")
        assert got.status_code == 200 and got.content == BIG
        assert up.requests[0].body == body
        assert testing.wait_for(lambda: len(_entries(a_log)) == len(_entries(b_log)) == 2)
        assert {e["protocol"] for e in _entries(a_log)} == {
            "HTTP/2" if client_http2 else "HTTP/1.1"
        }
        assert {e["protocol"] for e in _entries(b_log)} == {"HTTP/2"}


def test_h2load_many_streams_on_one_connection() -> None:
    with (
        testing.Upstream(lambda s: testing.Reply(200, b"x" * 100, delay=0.02)) as up,
        chain(up.address) as (port, a_log, b_log),
    ):
        done = subprocess.run(
            ["h2load", "-n", "200", "-c", "1", "-m", "50", "-T", str(int(IO_TIMEOUT)),
             f"http://127.0.0.1:{port}/load"], capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip
        assert "200 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout + done.stderr
        assert "status codes: 200 2xx" in done.stdout, done.stdout
        assert re.search(r"Application protocol: h2c", done.stdout), done.stdout
        assert testing.wait_for(lambda: len(_entries(b_log)) == 200, timeout=10)
        assert {e["client"] for e in _entries(a_log)} == {_entries(a_log)[0]["client"]}
        # A's upstream streams shared connections: B saw far fewer than 200 (or 50).
        connections = len({e["client"] for e in _entries(b_log)})
        assert connections <= 4, f"A opened {connections} HTTP/2 connections to B"
        assert len(up.requests) == 200


# a hostile client, with h2 on a plain socket -----------------------------------------------
class RawH2:
    """An HTTP/2 client connection whose every frame the test controls."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        # Room on the connection; each stream keeps the default 64 KiB window, which the
        # test opens only when it wants to.
        self.conn.increment_flow_control_window(1 << 30)
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str, *extra: tuple[str, str]) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":path", path),
                   (":authority", "test"), *extra]  # fmt: skip
        self.conn.send_headers(stream, headers, end_stream=True)
        self.flush()
        return stream

    def pump(self, until: Callable[[], bool], timeout: float = IO_TIMEOUT) -> bool:
        """Read frames until ``until()`` or the peer closes; whether ``until()``."""
        deadline = time.monotonic() + timeout
        while not until() and not self.closed and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                data = b""
            if not data:
                self.closed = True
                break
            self.events.extend(self.conn.receive_data(data))
            self.flush()
        return until()

    def drain(self, stream: int, timeout: float = 30.0) -> int:
        """Read ``stream`` to its end, opening its window as data comes (the data is
        counted, not kept); the bytes read."""
        got = 0
        deadline = time.monotonic() + timeout
        while not self.ended(stream) and not self.closed and time.monotonic() < deadline:
            data = self.sock.recv(1 << 20)
            if not data:
                self.closed = True
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    got += len(event.data)
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                else:
                    self.events.append(event)
            self.flush()
        return got

    def of(self, stream: int, kind: type[h2.events.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and
                getattr(e, "stream_id", None) == stream]  # fmt: skip

    def ended(self, stream: int) -> bool:
        return bool(
            self.of(stream, h2.events.StreamEnded) or self.of(stream, h2.events.StreamReset)
        )

    def status(self, stream: int) -> str:
        (response,) = self.of(stream, h2.events.ResponseReceived)
        return str(dict(response.headers)[":status"])

    def body(self, stream: int) -> bytes:
        return b"".join(e.data for e in self.of(stream, h2.events.DataReceived))

    def close(self) -> None:
        self.sock.close()


@contextmanager
def raw_client(port: int) -> Iterator[RawH2]:
    client = RawH2(port)
    try:
        yield client
    finally:
        client.close()


def test_a_stream_reset_mid_response_leaves_the_other_streams_alone() -> None:
    with testing.Upstream(_echo) as up, proxy(up.address) as (sc, log):
        with raw_client(sc.port("main")) as client:
            big = client.get("/big")
            other = client.get("/slow-reader-elsewhere")
            assert client.pump(lambda: bool(client.of(big, h2.events.DataReceived)))
            client.conn.reset_stream(big, h2.errors.ErrorCodes.CANCEL)
            client.flush()
            assert client.pump(lambda: client.ended(other))
            assert client.status(other) == "200"
            assert client.body(other) == b"/slow-reader-elsewhere"
            after = client.get("/after")
            assert client.pump(lambda: client.ended(after))
            assert client.status(after) == "200" and client.body(after) == b"/after"
            assert len(client.body(big)) < len(BIG)
            assert not client.closed
        assert testing.wait_for(lambda: len(_entries(log)) == 3)
        by_path = {e["path"]: e for e in _entries(log)}
        assert by_path["/after"]["response_flags"] == "-"
        assert by_path["/big"]["response_flags"] != "-", by_path["/big"]


class _Firehose:
    """An HTTP/1.1 upstream answering one request with ``size`` bytes, written as fast as
    the proxy reads them; :attr:`sent` is how far it got."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        chunk = b"z" * 65536
        with conn:
            conn.settimeout(IO_TIMEOUT * 4)
            try:
                while b"\r\n\r\n" not in conn.recv(65536):
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                while self.sent < self.size:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass

    def __enter__(self) -> _Firehose:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self._thread.join(IO_TIMEOUT * 5)


def test_a_slow_http2_reader_holds_back_the_upstream() -> None:
    size = 64 * 1024 * 1024
    with _Firehose(size) as up, proxy(up.address) as (sc, _), raw_client(sc.port("main")) as c:
        stream = c.get("/firehose")
        assert c.pump(lambda: bool(c.of(stream, h2.events.DataReceived)))
        time.sleep(1.0)  # the client's 64 KiB stream window is full and stays so
        # What left the upstream is what fits in socket buffers and the proxy's stream
        # buffer, not the response.
        held = up.sent
        assert held < size // 3, held
        time.sleep(0.5)
        assert up.sent == held
        for event in c.of(stream, h2.events.DataReceived):
            c.conn.acknowledge_received_data(event.flow_controlled_length, stream)
        assert len(c.body(stream)) + c.drain(stream) == size


@pytest.mark.parametrize(
    "frame",
    [
        # a SETTINGS frame whose length is not a multiple of 6 (RFC 9113 6.5)
        b"\x00\x00\x03\x04\x00\x00\x00\x00\x00abc",
        # DATA on stream 0 (RFC 9113 6.1)
        b"\x00\x00\x02\x00\x00\x00\x00\x00\x00hi",
        # HEADERS on an even (server-initiated) stream with garbage for HPACK
        b"\x00\x00\x03\x01\x05\x00\x00\x00\x02\xff\xff\xff",
    ],
    ids=["settings-length", "data-on-stream-0", "even-stream-garbage-hpack"],
)
def test_an_invalid_frame_gets_a_goaway_and_the_connection_closes(frame: bytes) -> None:
    with testing.Upstream(_echo) as up, proxy(up.address) as (sc, _):
        with raw_client(sc.port("main")) as client:
            ok = client.get("/before")
            assert client.pump(lambda: client.ended(ok))
            client.sock.sendall(frame)
            assert client.pump(lambda: client.closed, timeout=IO_TIMEOUT)
            (goaway,) = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
            assert goaway.error_code in (
                h2.errors.ErrorCodes.PROTOCOL_ERROR,
                h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                h2.errors.ErrorCodes.COMPRESSION_ERROR,
            ), goaway
            assert goaway.last_stream_id == ok
        assert [r.path for r in up.requests] == ["/before"]


@pytest.mark.parametrize("settled", [False, True], ids=["at-once", "after-settings-ack"])
def test_a_header_list_over_max_header_list_size_is_refused(settled: bool) -> None:
    # Refused on its stream (431 or a reset), whether the client sent it before or after
    # it had the listener's SETTINGS; the connection's other streams go on.
    with (
        testing.Upstream(_echo) as up,
        proxy(up.address, http2={"max_header_list_size": 1024}) as (sc, _),
        raw_client(sc.port("main")) as client,
    ):
        if settled:
            acked = h2.events.SettingsAcknowledged
            assert client.pump(lambda: any(isinstance(e, acked) for e in client.events))
        huge = client.get("/huge", ("x-big", "a" * 4096))
        small = client.get("/small", ("x-small", "a" * 100))
        assert client.pump(lambda: client.ended(huge) and client.ended(small)), client.events
        refused_by_reset = client.of(huge, h2.events.StreamReset)
        assert refused_by_reset or client.status(huge) == "431"
        assert client.status(small) == "200"
        assert [r.path for r in up.requests] == ["/small"]


def test_a_path_that_fails_normalisation_is_a_400_on_its_stream_only() -> None:
    with (
        testing.Upstream(_echo) as up,
        proxy(up.address) as (sc, log),
        raw_client(sc.port("main")) as client,
    ):
        bad = client.get("/a%zz/b")
        good = client.get("/fine")
        assert client.pump(lambda: client.ended(bad) and client.ended(good))
        assert client.status(bad) == "400"
        assert client.status(good) == "200" and client.body(good) == b"/fine"
        assert [r.path for r in up.requests] == ["/fine"]
        assert not client.closed
    assert testing.wait_for(lambda: len(_entries(log)) == 2)
    assert sorted(e["status"] for e in _entries(log)) == [200, 400]
