"""The HTTP/1.1 codec (codec.py) without sockets: parsed pieces in, decisions and bytes
out, table by table. The chunked decoder's tables are in test_codec_chunked.py, the
conformance cases run through the codec in test_codec_conformance.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidemesh.datapath import codec
from sidemesh.datapath.codec import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    CONTINUE,
    FORWARDED,
    LAST_CHUNK,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_TARGET_BYTES,
    CodecError,
    check_field_limits,
    check_target_length,
    client_fields,
    encode_chunk,
    expects_continue,
    field_name,
    parse_content_length,
    relay_fields,
    request_framing,
    request_head,
    request_host,
    request_target,
    response_framing,
    response_has_body,
    response_head,
    strip_hop_by_hop,
    upstream_framing,
)
from sidemesh.datapath.messages import Headers, Response


def refused(status: int) -> CodecError:
    """An expected refusal in a table (compared by status)."""
    return CodecError(status, "")


def check(call: Callable[[], Any], expected: Any) -> None:
    """``call()`` gives ``expected``, or raises a CodecError with its status."""
    if isinstance(expected, CodecError):
        with pytest.raises(CodecError) as info:
            call()
        assert info.value.status == expected.status, info.value.message
        assert info.value.message and str(info.value) == info.value.message
    else:
        assert call() == expected


# the request head ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, None), (MAX_TARGET_BYTES, None), (MAX_TARGET_BYTES + 1, refused(414))],
)
def test_target_length(size: int, expected: Any) -> None:
    check(lambda: check_target_length(size), expected)


@pytest.mark.parametrize(
    ("kept", "size", "expected"),
    [
        (0, 10, None),
        (MAX_HEADERS - 1, MAX_HEADER_BYTES, None),
        (MAX_HEADERS, 10, refused(431)),
        (0, MAX_HEADER_BYTES + 1, refused(431)),
    ],
)
def test_field_limits(kept: int, size: int, expected: Any) -> None:
    check(lambda: check_field_limits(kept, size), expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"Host", "host"),
        (b"X-Request-ID", "x-request-id"),
        (b"content-length", "content-length"),
        (b"Transfer_Encoding", None),
        (b"_", None),
        (b"x\xe9", "x\xe9"),
    ],
)
def test_field_name(name: bytes, expected: str | None) -> None:
    assert field_name(name) == expected


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", b"/", ("/", None)),
        ("GET", b"/a/b?c=1&d", ("/a/b?c=1&d", None)),
        ("POST", b"//double", ("//double", None)),
        ("OPTIONS", b"*", ("*", None)),
        ("GET", b"http://backend.test/", ("/", "backend.test")),
        ("GET", b"http://h", ("/", "h")),
        ("GET", b"http://h:8080/p?q=1", ("/p?q=1", "h:8080")),
        ("GET", b"https://Example.COM/x", ("/x", "Example.COM")),
        ("GET", b"*", refused(400)),
        ("GET", b"example.com", refused(400)),
        ("GET", b"http:///x", refused(400)),
        ("GET", b"h:80", refused(400)),
        ("CONNECT", b"backend.test:443", refused(501)),
        ("CONNECT", b"/", refused(501)),
        ("CONNECT", b"http://backend.test/", refused(501)),
    ],
)
def test_request_target(method: str, target: bytes, expected: Any) -> None:
    check(lambda: request_target(method, target), expected)


@pytest.mark.parametrize(
    ("version", "host", "hosts", "authority", "expected"),
    [
        ("1.1", "a.test", 1, None, "a.test"),
        ("1.1", "A.test:8080", 1, None, "A.test:8080"),
        ("1.1", None, 0, None, refused(400)),
        ("1.1", "a.test", 2, None, refused(400)),
        ("1.1", "evil.test", 1, "backend.test", "backend.test"),
        ("1.1", None, 0, "backend.test", "backend.test"),
        ("1.1", "a", 2, "backend.test", refused(400)),
        ("1.0", None, 0, None, ""),
        ("1.0", "a.test", 2, None, "a.test"),
        ("1.0", None, 0, "backend.test", "backend.test"),
    ],
)
def test_request_host(
    version: str, host: str | None, hosts: int, authority: str | None, expected: Any
) -> None:
    check(lambda: request_host(version, host, hosts, authority), expected)


# framing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("5", 5),
        ("005", 5),
        (" 5\t", 5),
        ("0" * 40 + "7", 7),
        ("9" * 18, 10**18 - 1),
        ("1" + "0" * 18, refused(400)),
        ("+5", refused(400)),
        ("-1", refused(400)),
        ("5, 5", refused(400)),
        ("5 5", refused(400)),
        ("0x5", refused(400)),
        ("5_0", refused(400)),
        ("", refused(400)),
        (" ", refused(400)),
        ("\xb2", refused(400)),  # a latin-1 superscript 2: a digit to str.isdigit()
    ],
)
def test_parse_content_length(value: str, expected: Any) -> None:
    check(lambda: parse_content_length(value), expected)


@pytest.mark.parametrize(
    ("te", "cl", "expected"),
    [
        (None, None, BODY_NONE),
        (None, "0", BODY_LENGTH),
        (None, "005", BODY_LENGTH),
        ("chunked", None, BODY_CHUNKED),
        ("Chunked", None, BODY_CHUNKED),
        (" chunked ", None, BODY_CHUNKED),
        (", chunked,", None, BODY_CHUNKED),
        ("chunked", "5", refused(400)),
        ("chunked", "0", refused(400)),
        (None, "+5", refused(400)),
        (None, "-1", refused(400)),
        ("chunk", None, refused(400)),
        ("gzip", None, refused(400)),
        ("chunked, gzip", None, refused(400)),
        ("chunked, chunked", None, refused(400)),
        ("", None, refused(400)),
        (" , ", None, refused(400)),
        ("gzip, chunked", None, refused(501)),
        ("identity, chunked", None, refused(501)),
    ],
)
def test_request_framing(te: str | None, cl: str | None, expected: Any) -> None:
    check(lambda: request_framing(te, cl), expected)


@pytest.mark.parametrize(
    ("chunked", "cl", "expected"),
    [
        (True, None, ("transfer-encoding", "chunked")),
        (False, "005", ("content-length", "5")),
        (False, "0", ("content-length", "0")),
        (False, None, None),
        (False, "x", refused(400)),
    ],
)
def test_upstream_framing(chunked: bool, cl: str | None, expected: Any) -> None:
    check(lambda: upstream_framing(chunked, cl), expected)


@pytest.mark.parametrize(
    ("head", "status", "has_length", "version", "expected"),
    [
        (False, 200, True, "1.1", BODY_LENGTH),
        (False, 200, False, "1.1", BODY_CHUNKED),
        (False, 200, False, "1.0", BODY_CLOSE),
        (False, 200, True, "1.0", BODY_LENGTH),
        (False, 500, False, "1.1", BODY_CHUNKED),
        (True, 200, False, "1.1", BODY_NONE),
        (True, 200, True, "1.0", BODY_NONE),
        (False, 204, False, "1.1", BODY_NONE),
        (False, 304, False, "1.0", BODY_NONE),
        (False, 101, False, "1.1", BODY_NONE),
        (False, 205, False, "1.1", BODY_CHUNKED),
    ],
)
def test_response_framing(
    head: bool, status: int, has_length: bool, version: str, expected: int
) -> None:
    assert response_framing(head, status, has_length, version) == expected
    assert response_has_body(head, status) == (expected != BODY_NONE)


# hop-by-hop fields --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "drop", "has_connection", "expected"),
    [
        ([("host", "a"), ("x-a", "1")], None, True, [("host", "a"), ("x-a", "1")]),
        (
            [("host", "a"), ("connection", "keep-alive"), ("keep-alive", "5"), ("te", "x")],
            None,
            True,
            [("host", "a")],
        ),
        (
            [
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMA"),
                ("host", "a"),
            ],
            None,
            True,
            [("host", "a")],
        ),
        (
            [("connection", "x-secret"), ("x-secret", "1"), ("x-other", "2")],
            None,
            True,
            [("x-other", "2")],
        ),
        (
            [("connection", "close"), ("connection", "x-b"), ("x-b", "1"), ("x-c", "2")],
            None,
            True,
            [("x-c", "2")],
        ),
        # the parser saw no Connection field: nothing is scanned for one
        ([("x-secret", "1"), ("content-length", "5")], None, False, [("x-secret", "1")]),
        (
            [("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https"), ("host", "a")],
            FORWARDED,
            False,
            [("host", "a")],
        ),
    ],
)
def test_strip_hop_by_hop(
    fields: list[tuple[str, str]],
    drop: frozenset[str] | None,
    has_connection: bool,
    expected: list[tuple[str, str]],
) -> None:
    headers = Headers(fields)
    if drop is None:
        assert strip_hop_by_hop(headers, has_connection=has_connection) == expected
    else:
        assert strip_hop_by_hop(headers, drop, has_connection) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], (b"", None)),
        (
            [(b"content-type", b"text/plain"), (b"content-length", b"5")],
            (b"content-type: text/plain\r\ncontent-length: 5\r\n", b"5"),
        ),
        (
            [(b"transfer-encoding", b"chunked"), (b"connection", b"keep-alive"), (b"x", b"1")],
            (b"x: 1\r\n", None),
        ),
        (
            [(b"connection", b"X-Hop, x-two"), (b"x-hop", b"1"), (b"x-two", b"2"), (b"y", b"3")],
            (b"y: 3\r\n", None),
        ),
        ([(b"keep-alive", b"timeout=5"), (b"trailer", b"x"), (b"upgrade", b"h2c")], (b"", None)),
    ],
)
def test_relay_fields(raw: list[tuple[bytes, bytes]], expected: tuple[bytes, bytes | None]) -> None:
    assert relay_fields(raw) == expected


def test_client_fields_relay_raw_bytes_until_a_policy_reads_the_headers() -> None:
    raw = [(b"content-length", b"2"), (b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")]
    assert client_fields(Response._from_upstream(200, raw)) == (
        b"content-length: 2\r\nx-b: 2\r\n",
        True,
    )
    touched = Response._from_upstream(200, raw)
    touched.headers.add("x-c", "3")
    fields, framed = client_fields(touched)
    assert isinstance(fields, Headers) and framed
    assert fields.items() == [("x-b", "2"), ("x-c", "3"), ("content-length", "2")]
    fields, framed = client_fields(Response(200, Headers([("transfer-encoding", "chunked")])))
    assert isinstance(fields, Headers) and not framed and len(fields) == 0


# bytes on the wire -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "reason", "close", "chunked", "expected"),
    [
        (200, "", False, False, b"HTTP/1.1 200 OK\r\nx: 1\r\n\r\n"),
        (404, "Nope", False, False, b"HTTP/1.1 404 Nope\r\nx: 1\r\n\r\n"),
        (299, "", False, False, b"HTTP/1.1 299 Unknown\r\nx: 1\r\n\r\n"),
        (
            200,
            "",
            True,
            True,
            b"HTTP/1.1 200 OK\r\nx: 1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
    ],
)
def test_response_head(
    status: int, reason: str, close: bool, chunked: bool, expected: bytes
) -> None:
    assert response_head(status, reason, b"x: 1\r\n", close, chunked) == expected


def test_request_head_and_continue() -> None:
    assert request_head("GET", "/a?b", b"host: h\r\n") == b"GET /a?b HTTP/1.1\r\nhost: h\r\n\r\n"
    assert request_head("OPTIONS", "*", b"") == b"OPTIONS * HTTP/1.1\r\n\r\n"
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert [expects_continue(v) for v in (None, "", "100-Continue", "100-continue", "x")] == [
        False,
        False,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),
    ],
)
def test_encode_chunk(data: bytes, expected: bytes) -> None:
    assert encode_chunk(data) == expected
    assert LAST_CHUNK == b"0\r\n\r\n"


# versions, upgrades and Connection (issue 13) ------------------------------------------
@pytest.mark.parametrize(("version", "status"), [("0.9", 400), ("2.0", 505), ("3.0", 505)])
def test_only_http_1_0_and_1_1_pass(version: str, status: int) -> None:
    codec.check_version("1.0")
    codec.check_version("1.1")
    with pytest.raises(codec.CodecError) as refused:
        codec.check_version(version)
    assert refused.value.status == status


@pytest.mark.parametrize("framing", [codec.BODY_LENGTH, codec.BODY_CHUNKED])
def test_upgrade_with_a_body_is_refused(framing: int) -> None:
    codec.check_upgrade(None, framing)
    codec.check_upgrade("websocket", codec.BODY_NONE)
    with pytest.raises(codec.CodecError, match="Upgrade and a body") as refused:
        codec.check_upgrade("h2c", framing)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("connection", "nominated"),
    [
        ("close", set()),
        ("keep-alive, X-Secret", {"keep-alive", "x-secret"}),
        ("host, x-request-id, te", {"te"}),
        ("Host,,X-Request-Id", set()),
        (" upgrade ,\tx-a", {"upgrade", "x-a"}),
    ],
)
def test_connection_nominates_fields_but_never_host_or_the_request_id(
    connection: str, nominated: set[str]
) -> None:
    assert codec.nominated_fields(connection) == nominated
