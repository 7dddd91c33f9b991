"""Issue 13's findings, each reproduced as an attacker would, with raw sockets against a
real sidecar and a real upstream. Every test here failed before its fix."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sidemesh import testing
from sidemesh.control.ca import CertificateAuthority
from sidemesh.testing.certs import svid_files


def _sidecar_doc(upstream: str, **listener: Any) -> dict[str, Any]:
    doc = testing.simple_config(upstream)
    doc["listeners"][0].update(listener)
    doc["listeners"][0]["routes"][0]["match"] = {"prefix": "/public"}
    return doc


@contextmanager
def proxy(**listener: Any) -> Iterator[tuple[testing.Upstream, testing.RunningSidecar]]:
    with (
        testing.Upstream() as up,
        testing.running_sidecar(_sidecar_doc(up.address, **listener)) as sc,
    ):
        yield up, sc


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


# 1. smuggling through Upgrade + Content-Length --------------------------------------
def test_upgrade_with_a_body_is_refused_and_its_body_never_parsed() -> None:
    inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    attack = (
        b"POST /public HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(inner), inner)
    )
    with proxy() as (up, sc):
        log = io.StringIO()
        sc.log_to(log)
        answer = testing.raw_exchange(sc.port("main"), attack)
        assert status(answer) == 400 and b"Upgrade and a body" in answer
        assert answer.count(b"HTTP/1.1 ") == 1  # the inner request was never answered
        assert up.requests == []
        # The access log shows the attempt, as Envoy logs a downstream protocol error.
        assert testing.wait_for(lambda: log.getvalue().endswith("\n"))
        (entry,) = [json.loads(line) for line in log.getvalue().splitlines()]
        assert entry["status"] == 400 and entry["response_flags"] == "DPE"
        assert "Upgrade and a body" in entry["error"]


# 5. path normalization -------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/public/../admin", 404),
        (b"/public/%2e%2e/admin", 404),
        (b"/public%2F..%2Fadmin", 400),
        (b"/public\\..\\admin", 404),
        (b"//public/../admin", 404),
        (b"/public#/../admin", 400),
    ],
)
def test_a_path_cannot_escape_its_route(target: bytes, expected: int) -> None:
    with proxy() as (up, sc):
        answer = testing.raw_exchange(
            sc.port("main"), b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target
        )
        assert status(answer) == expected, answer[:200]
        assert up.requests == []


def test_the_normalized_path_is_the_one_forwarded() -> None:
    with proxy() as (up, sc):
        answer = testing.raw_exchange(
            sc.port("main"), b"GET /public/./a//b/../c?x=/../y HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status(answer) == 200
        assert up.requests[0].path == "/public/a/c?x=/../y"


def test_escaped_slashes_can_be_kept_by_config() -> None:
    with proxy(path_normalization={"escaped_slashes": "keep"}) as (up, sc):
        answer = testing.raw_exchange(
            sc.port("main"), b"GET /public/a%2fb HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status(answer) == 200
        assert up.requests[0].path == "/public/a%2Fb"


# 6. connection hygiene -----------------------------------------------------------
def test_a_trickled_head_gets_408_after_request_headers_timeout() -> None:
    with (
        proxy(request_headers_timeout="400ms") as (up, sc),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=5) as sock,
    ):
        started = time.monotonic()
        # A byte every 50 ms: each read is activity, but the head never ends.
        for byte in b"GET /public HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        assert status(answer) == 408, answer
        assert time.monotonic() - started < 3
        assert up.requests == []


def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    with (
        proxy(idle_timeout="300ms") as (_, sc),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=5) as sock,
    ):
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the proxy, not by our timeout
        assert time.monotonic() - started < 3


def _closed_without_answer(port: int) -> bool:
    """Whether a new connection is closed (or reset) before any byte of an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(65536) == b""
        except OSError:  # reset as it arrived: refused too
            return True


def _overflows() -> float:
    labels = {"listener": "main"}
    return REGISTRY.get_sample_value("sidemesh_downstream_cx_overflow_total", labels) or 0.0


def test_connections_over_max_connections_are_refused_and_counted() -> None:
    with proxy(max_connections=2) as (_, sc):
        before = _overflows()
        held = [
            socket.create_connection(("127.0.0.1", sc.port("main")), timeout=5) for _ in range(2)
        ]
        try:
            assert testing.wait_for(lambda: len(sc.sidecar.connections) == 2)
            assert _closed_without_answer(sc.port("main"))
            assert _overflows() == before + 1
        finally:
            for sock in held:
                sock.close()
        assert testing.wait_for(lambda: len(sc.sidecar.connections) == 0)
        again = testing.raw_exchange(sc.port("main"), b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(again) == 200


@contextmanager
def mtls_proxy(
    tmp_path: Path, mode: str, **listener: Any
) -> Iterator[tuple[CertificateAuthority, testing.RunningSidecar]]:
    """A sidecar whose listener has the mtls plugin in ``mode`` with ``b``'s certificate
    from a real CA, which it yields to issue clients' certificates."""
    ca = CertificateAuthority.open(tmp_path / "ca", "cluster.local")
    server = svid_files(ca, tmp_path, "b")
    with testing.Upstream() as up:
        doc = _sidecar_doc(up.address, **listener)
        doc["listeners"][0]["plugins"] = [{"name": "mtls", "config": {"mode": mode, **server}}]
        with testing.running_sidecar(doc) as sc:
            yield ca, sc


def _client_context(files: dict[str, str] | None = None) -> ssl.SSLContext:
    """A TLS client that trusts any server, presenting ``files``' certificate if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if files is not None:
        context.load_cert_chain(files["cert_file"], files["key_file"])
    return context


def _tls_client(port: int, context: ssl.SSLContext) -> None:
    with (
        contextlib.suppress(OSError),
        context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as tls,
    ):
        tls.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.recv(65536)


def _failing_tls_clients(port: int) -> None:
    """What reaches an mTLS port and never completes a handshake: a client without a
    certificate, a TCP probe (a load balancer's, a kubelet's), a ClientHello cut off."""
    _tls_client(port, _client_context())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as cut:
        cut.sendall(b"\x16\x03\x01\x00\xff\x01")


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_failed_tls_handshakes_give_their_connection_slot_back(
    mode: str, tmp_path: Path
) -> None:
    # Each of them used to keep its place under max_connections for good: an
    # unauthenticated client could fill an mTLS listener until it refused every caller.
    with mtls_proxy(tmp_path, mode, max_connections=3) as (ca, sc):
        port = sc.port("main")
        for _ in range(3):
            _failing_tls_clients(port)
        assert testing.wait_for(lambda: len(sc.sidecar.connections) == 0)
        good = _client_context(svid_files(ca, tmp_path, "a"))
        with good.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as tls:
            tls.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status(tls.recv(65536)) == 200


def test_a_permissive_listener_counts_connections_before_their_first_byte(
    tmp_path: Path,
) -> None:
    # A permissive port waits up to 10 s for a client's first byte to tell TLS from
    # plain HTTP; those connections used to escape max_connections altogether.
    with mtls_proxy(tmp_path, "permissive", max_connections=2) as (_, sc):
        port = sc.port("main")
        before = _overflows()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            assert testing.wait_for(lambda: len(sc.sidecar.connections) == 2)
            assert _closed_without_answer(port)
            assert _overflows() == before + 1
        finally:
            for sock in silent:
                sock.close()
        assert testing.wait_for(lambda: len(sc.sidecar.connections) == 0)
        again = testing.raw_exchange(port, b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(again) == 200


def test_a_permissive_listener_drops_a_client_that_never_sends_a_byte(
    tmp_path: Path,
) -> None:
    with mtls_proxy(tmp_path, "permissive") as (_, sc):
        started = time.monotonic()  # before the accept, where the proxy's timer starts
        with socket.create_connection(("127.0.0.1", sc.port("main")), timeout=20) as silent:
            assert testing.wait_for(lambda: len(sc.sidecar.connections) == 1)
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""  # closed by the proxy, not by our timeout
        assert 9 < time.monotonic() - started < 15  # SNIFF_TIMEOUT, 10 s
        assert testing.wait_for(lambda: len(sc.sidecar.connections) == 0)


def test_a_tls_listener_at_its_limit_refuses_before_any_handshake(tmp_path: Path) -> None:
    # Envoy closes an overflowing connection as it is accepted. Handshaking first gave
    # every client over the limit a server key operation for nothing.
    with mtls_proxy(tmp_path, "strict", max_connections=1) as (ca, sc):
        port = sc.port("main")
        good = _client_context(svid_files(ca, tmp_path, "a"))
        before = _overflows()
        with good.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)):
            assert testing.wait_for(lambda: len(sc.sidecar.connections) == 1)
            with pytest.raises(OSError):  # reset or EOF in the handshake, no ServerHello
                good.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert _overflows() == before + 1
        assert testing.wait_for(lambda: len(sc.sidecar.connections) == 0)


def _handshake_failures(reason: str) -> float:
    labels = {"listener": "main", "reason": reason}
    sample = "sidemesh_downstream_tls_handshake_failures_total"
    return REGISTRY.get_sample_value(sample, labels) or 0.0


def test_failed_tls_handshakes_are_counted_by_reason(tmp_path: Path) -> None:
    other = CertificateAuthority.open(tmp_path / "other-ca", "cluster.local")
    (tmp_path / "other").mkdir()
    stranger = svid_files(other, tmp_path / "other", "a")
    reasons = ("no_certificate", "verify_failed", "closed", "error")
    with mtls_proxy(tmp_path, "strict") as (_, sc):
        port = sc.port("main")
        before = {reason: _handshake_failures(reason) for reason in reasons}
        _tls_client(port, _client_context())
        _tls_client(port, _client_context(stranger))
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        testing.raw_exchange(port, b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
        expected = {reason: before[reason] + 1 for reason in reasons}
        assert testing.wait_for(
            lambda: {reason: _handshake_failures(reason) for reason in reasons} == expected)


def test_max_requests_per_connection_closes_after_the_last() -> None:
    with (
        proxy(max_requests_per_connection=2) as (_, sc),
        socket.create_connection(("127.0.0.1", sc.port("main")), timeout=5) as sock,
    ):
        sock.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        answer = b""
        while chunk := sock.recv(65536):  # until the proxy closes
            answer += chunk
        assert answer.count(b"HTTP/1.1 200") == 2
        first, second = answer.split(b"HTTP/1.1 200")[1:]
        assert b"connection: close" not in first.lower()
        assert b"connection: close" in second.lower()


# 7. smaller findings --------------------------------------------------------------
def test_connection_cannot_drop_host_or_the_request_id() -> None:
    with proxy() as (up, sc):
        request = (
            b"GET /public HTTP/1.1\r\nHost: svc\r\nx-request-id: abc\r\nx-secret: s\r\n"
            b"Connection: host, x-request-id, x-secret\r\n\r\n"
        )
        assert status(testing.raw_exchange(sc.port("main"), request)) == 200
        seen = up.requests[0].headers
        assert seen.get("host") == "svc" and seen.get("x-request-id") == "abc"
        assert "x-secret" not in seen


@pytest.mark.parametrize(
    ("line", "expected", "reason"),
    [
        (b"GET /public HTTP/2.0", 505, b"HTTP/2.0 is not supported"),
        (b"GET /public HTTP/0.9", 400, b"HTTP/0.9 is not supported"),
        (b"GET /public", 400, b"HTTP/0.9 is not supported"),
        (b"GET /public HTTP/1.2", 400, b"Invalid HTTP version"),
    ],
)
def test_only_http_1_0_and_1_1_are_forwarded(line: bytes, expected: int, reason: bytes) -> None:
    with proxy() as (up, sc):
        answer = testing.raw_exchange(sc.port("main"), line + b"\r\nHost: x\r\n\r\n")
        assert status(answer) == expected and reason in answer, answer
        assert up.requests == []


def test_a_content_length_trailer_is_dropped_not_refused() -> None:
    with proxy() as (up, sc):
        request = (
            b"POST /public HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"
        )
        assert status(testing.raw_exchange(sc.port("main"), request)) == 200
        assert up.requests[0].body == b"hello"
        assert up.requests[0].headers.get("content-length") != "99"


def test_content_length_with_transfer_encoding_in_the_head_is_still_refused() -> None:
    with proxy() as (up, sc):
        request = (
            b"POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        assert status(testing.raw_exchange(sc.port("main"), request)) == 400
        assert up.requests == []
