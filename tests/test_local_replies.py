"""The proxy's own answers (no route, a dead upstream, a refused request), as Envoy's
local replies: to a HEAD request with no body (RFC 9110 9.3.2; on a kept-alive HTTP/1.1
connection a body would be read as the head of the next response), and before the
request's body is in with ``connection: close`` and a delayed close."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from sidemesh import testing

IO_TIMEOUT = 5.0


def _config(upstream: str) -> dict[str, object]:
    doc = testing.simple_config(upstream)
    doc["listeners"][0]["routes"][0]["match"] = {"prefix": "/api"}
    return doc


def _upload_to_nowhere(sock: socket.socket) -> bytes:
    """POST a 4 MiB body to a path with no route, the body only once the 404 is out;
    what comes back, up to the end of the 404 (or the close)."""
    body = b"x" * (4 << 20)
    sock.sendall(f"POST /elsewhere HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode())
    time.sleep(0.2)  # the answer is out before the body starts
    sock.sendall(body)
    received = b""
    while b'"path": "/elsewhere"}' not in received and (chunk := sock.recv(65536)):
        received += chunk
    return received


@pytest.fixture(scope="module")
def sidecar() -> object:
    # Nothing listens on the cluster's endpoint: /api/... gets the proxy's 503 (UF).
    with testing.running_sidecar(_config(f"127.0.0.1:{testing.free_port()}")) as sc:
        yield sc


@pytest.mark.parametrize("path, status", [("/elsewhere", 404), ("/api/x", 503)])
def test_a_head_answer_has_no_body_and_the_next_response_follows_it(
    sidecar: testing.RunningSidecar, path: str, status: int
) -> None:
    received = testing.raw_exchange(
        sidecar.port("main"),
        f"HEAD {path} HTTP/1.1\r\nHost: a\r\n\r\nGET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
        timeout=1.0,
        half_close=False,
    )
    head, _, rest = received.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and length, received
    # The GET's answer starts right after the HEAD's head, with the body the HEAD's
    # content-length announced.
    assert rest.startswith(f"HTTP/1.1 {status} ".encode()), received
    _, _, get_body = rest.partition(b"\r\n\r\n")
    assert len(get_body) == int(length.group(1)) > 0, received


@pytest.mark.parametrize("path, status", [("/elsewhere", b"404"), ("/a%zz/b", b"400")])
def test_a_head_answer_over_http2_ends_its_stream_with_the_headers(
    sidecar: testing.RunningSidecar, path: str, status: bytes
) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", sidecar.port("main")), timeout=IO_TIMEOUT) as sock:
        conn.send_headers(1, [(":method", "HEAD"), (":scheme", "http"), (":path", path),
                              (":authority", "a")], end_stream=True)  # fmt: skip
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and not any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events
        ):
            data = sock.recv(65536)
            if not data:
                break
            events.extend(conn.receive_data(data))
            sock.sendall(conn.data_to_send())
    responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert responses and dict(responses[0].headers)[b":status"] == status, events
    assert responses[0].stream_ended is not None, "the HEADERS frame did not end the stream"
    assert not [e for e in events if isinstance(e, h2.events.DataReceived)], events


def test_an_answer_before_the_request_body_says_the_connection_closes(
    sidecar: testing.RunningSidecar,
) -> None:
    # The body is still to come when the 404 goes out: the proxy cannot skip it safely
    # and closes the connection, so the client must not send another request on it.
    with socket.create_connection(("127.0.0.1", sidecar.port("main")), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"POST /elsewhere HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 404 ") and b"\r\nconnection: close" in head, received


def test_a_client_still_sending_its_body_gets_the_early_answer_not_a_reset(
    sidecar: testing.RunningSidecar,
) -> None:
    # A large upload to a path with no route: the 404 comes before the body. Closing at
    # once, with the client's bytes unread, would reset the connection and could destroy
    # the 404 before the client read it; the proxy drops what follows for a while instead
    # (Envoy's delayed close), then closes.
    with socket.create_connection(("127.0.0.1", sidecar.port("main")), timeout=IO_TIMEOUT) as sock:
        received = _upload_to_nowhere(sock)
    assert received.startswith(b"HTTP/1.1 404 "), received
    assert received.endswith(b'"path": "/elsewhere"}'), received


@pytest.mark.skipif(not testing.installed("mtls"), reason="the mtls plugin is not installed")
def test_over_tls_too_the_early_answer_reaches_a_client_still_sending(tmp_path: Path) -> None:
    # TLS has no half-close: the proxy keeps reading and dropping until the client, told
    # by "connection: close", goes (or a second passes).
    ca = testing.control.CertificateAuthority.open(tmp_path / "ca", "cluster.local")
    server = testing.control.svid_files(ca, tmp_path, "echo")
    client = testing.control.svid_files(ca, tmp_path, "web")
    doc = _config(f"127.0.0.1:{testing.free_port()}")
    doc["listeners"][0]["plugins"] = [{"name": "mtls", "config": server}]
    context = ssl.create_default_context(cafile=client["bundle_file"])
    context.load_cert_chain(client["cert_file"], client["key_file"])
    context.check_hostname = False  # a SPIFFE certificate names no host
    with (
        testing.running_sidecar(doc) as sc,
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw) as sock,
    ):
        received = _upload_to_nowhere(sock)
    assert received.startswith(b"HTTP/1.1 404 "), received
    assert b"\r\nconnection: close\r\n" in received.lower(), received
