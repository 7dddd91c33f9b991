"""HTTP/1.1 without I/O: what the proxy checks in a request head on top of the parser,
how a body is framed on each side, which fields are hop-by-hop, and the bytes of heads
and chunks.

Pure functions over parsed pieces (h11 and mitmproxy keep theirs this way): the
protocol classes (downstream.py, pool.py) own the sockets and the parser's state, feed
these the pieces and act on the answers; tests/test_codec.py feeds them directly. A
request the proxy refuses raises :class:`CodecError` with the status to answer. The
chunked decoder lives in chunked.py.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final

import httptools

from sidemesh.datapath.messages import Headers, Response

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "CONTINUE",
    "FORWARDED",
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_TARGET_BYTES",
    "PLAIN_CONNECTION",
    "PROTECTED",
    "REASONS",
    "CodecError",
    "check_field_limits",
    "check_target_length",
    "check_upgrade",
    "check_version",
    "client_fields",
    "drop_nominated_fields",
    "encode_chunk",
    "expects_continue",
    "field_name",
    "nominated_fields",
    "parse_content_length",
    "relay_fields",
    "request_framing",
    "request_head",
    "request_host",
    "request_target",
    "response_framing",
    "response_has_body",
    "response_head",
    "strip_hop_by_hop",
    "upstream_framing",
]

# Final module constants: mypyc keeps them in C globals, no dict lookup per use.
#: reason phrases: RFC 9110's, over the standard library's older ones (413, 414).
REASONS: Final = {status.value: status.phrase for status in HTTPStatus} | {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
    414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}  # fmt: skip


# Envoy's defaults.
#: header fields in a request head (or trailer fields after a chunked body).
MAX_HEADERS: Final = 100
#: bytes of those fields.
MAX_HEADER_BYTES: Final = 60 * 1024
#: bytes of a request target.
MAX_TARGET_BYTES: Final = 8 * 1024


class CodecError(Exception):
    """A message the proxy refuses: the client is answered ``status`` with ``message``
    and the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# the request head ------------------------------------------------------------------
def check_target_length(size: int) -> None:
    """Refuse (414) a request target of ``size`` bytes (checked as it arrives)."""
    if size > MAX_TARGET_BYTES:
        raise CodecError(414, f"request target longer than {MAX_TARGET_BYTES} bytes")


def check_field_limits(kept: int, size: int) -> None:
    """Refuse (431) a field line arriving after ``kept`` fields, when the head's field
    lines (this one included) reach ``size`` bytes."""
    if kept >= MAX_HEADERS:
        raise CodecError(431, f"more than {MAX_HEADERS} header fields")
    if size > MAX_HEADER_BYTES:
        raise CodecError(431, f"header fields larger than {MAX_HEADER_BYTES} bytes")


def field_name(name: bytes) -> str | None:
    """A field name as the core keys it (lower case), or ``None`` for a name with an
    underscore: dropped, as Envoy's ``headers_with_underscores_action: DROP_HEADER``
    does (CGI-style servers read ``Transfer_Encoding`` as ``Transfer-Encoding``)."""
    if b"_" in name:
        return None
    return name.decode("latin-1").lower()


def request_target(method: str, target: bytes) -> tuple[str, str | None]:
    """The path (origin form, query included) and, for an absolute-form target, the
    authority, which wins over Host (RFC 9112 3.2.2). CONNECT is refused (501): the
    proxy tunnels nothing, whatever form the target takes."""
    if method == "CONNECT":
        raise CodecError(501, "CONNECT is not supported")
    if target[:1] == b"/":
        return target.decode("latin-1"), None
    if target == b"*" and method == "OPTIONS":
        return "*", None
    try:
        # Any, not the stub's types: host, port, path and query may be None.
        parsed: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise CodecError(400, "invalid request target") from None
    if not parsed.host:
        raise CodecError(400, "invalid request target")
    authority: str = parsed.host.decode("latin-1")
    if parsed.port:
        authority = f"{authority}:{parsed.port}"
    path: str = (parsed.path or b"/").decode("latin-1")
    if parsed.query:
        path += "?" + parsed.query.decode("latin-1")
    return path, authority


def check_version(version: str) -> None:
    """Only HTTP/1.0 and HTTP/1.1 are forwarded: an HTTP/0.9 line (400) or a higher
    version (505) would otherwise go upstream as HTTP/1.1 with another meaning."""
    if version in ("1.1", "1.0"):
        return
    if version[:2] == "0.":
        raise CodecError(400, f"HTTP/{version} is not supported")
    raise CodecError(505, f"HTTP/{version} is not supported on this listener: use HTTP/1.1")


def check_upgrade(upgrade: str | None, framing: int) -> None:
    """A request with ``Upgrade`` and a body is refused (400): the proxy tunnels nothing,
    and the bytes after an upgrade's head are not this request's body to any parser that
    took the upgrade."""
    if upgrade is not None and framing != BODY_NONE:
        raise CodecError(400, "a request with Upgrade and a body cannot be forwarded")


#: fields a Connection header cannot make the proxy drop: routes, policies and the
#: upstream all need them.
PROTECTED: Final = frozenset({"host", "x-request-id"})


def nominated_fields(connection: str) -> frozenset[str]:
    """The field names a Connection value (all its fields, joined by ``,``) makes
    hop-by-hop (RFC 9110 7.6.1), but those in :data:`PROTECTED`."""
    names = {t.strip(" \t").lower() for t in connection.split(",")}
    names.discard("")
    names.discard("close")
    return frozenset(names - PROTECTED)


def drop_nominated_fields(headers: Headers, core: dict[str, str]) -> None:
    """Remove the fields ``headers``' Connection fields nominate, and from ``core`` (the
    fields the core read as they came) those it keeps of them."""
    nominated = nominated_fields(",".join(headers.get_all("connection")))
    if nominated:
        headers.remove_all(nominated)
        for name in ("x-forwarded-for", "expect"):
            if name in nominated:
                core.pop(name, None)


def request_host(version: str, host: str | None, hosts: int, authority: str | None) -> str:
    """The request's host: the target's ``authority`` if it had one, else the first
    Host field (``hosts`` of them were seen). HTTP/1.1 needs exactly one Host (RFC 9112
    3.2); HTTP/1.0 may have none (then "")."""
    if authority is not None:
        host = authority
    if host is None:
        if version == "1.1":
            raise CodecError(400, "HTTP/1.1 request without a Host header")
        return ""
    if version == "1.1" and hosts > 1:
        raise CodecError(400, "more than one Host header")
    return host


# framing -------------------------------------------------------------------------------
#: how a body is delimited: none, by Content-Length, chunked, or by closing the connection.
BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_CLOSE: Final = 3


def parse_content_length(value: str) -> int:
    """A Content-Length value (``1*DIGIT``, leading zeros allowed); anything else is
    refused (400): ``+5``, ``-1``, ``5, 5``, or a length past 18 digits."""
    digits = value.strip(" \t")
    if not digits or not digits.isascii() or not digits.isdigit():
        raise CodecError(400, f"invalid Content-Length {value!r}")
    if len(digits.lstrip("0")) > 18:
        raise CodecError(400, "Content-Length too large")
    return int(digits)


def request_framing(transfer_encoding: str | None, content_length: str | None) -> int:
    """How a request body is delimited (RFC 9112 6.3), from its Transfer-Encoding and
    Content-Length values: ``BODY_CHUNKED``, ``BODY_LENGTH`` or ``BODY_NONE``. Both
    fields together are refused (400), as is chunked not last or twice; other transfer
    codings are refused (501): re-chunking would silently drop them."""
    if transfer_encoding is None:
        if content_length is None:
            return BODY_NONE
        parse_content_length(content_length)
        return BODY_LENGTH
    if content_length is not None:
        raise CodecError(400, "Transfer-Encoding and Content-Length together")
    if transfer_encoding.strip(" \t").lower() == "chunked":
        return BODY_CHUNKED
    # Empty list elements are allowed (RFC 9110 5.6.1) and mean nothing.
    codings = [c for c in (t.strip(" \t").lower() for t in transfer_encoding.split(",")) if c]
    if not codings or codings[-1] != "chunked" or "chunked" in codings[:-1]:
        raise CodecError(400, f"invalid Transfer-Encoding {transfer_encoding!r}")
    if len(codings) > 1:
        raise CodecError(501, f"transfer coding not supported: {transfer_encoding!r}")
    return BODY_CHUNKED


def upstream_framing(chunked: bool, content_length: str | None) -> tuple[str, str] | None:
    """The framing field a request carries upstream: a chunked body goes on chunked (it
    is re-chunked as it streams), a Content-Length goes normalised (``005`` as ``5``)."""
    if chunked:
        return ("transfer-encoding", "chunked")
    if content_length is not None:
        return ("content-length", str(parse_content_length(content_length)))
    return None


def response_has_body(head_request: bool, status: int) -> bool:
    """Whether a response can have a body: not to HEAD, not 1xx, 204 or 304 (RFC 9112 6.3)."""
    return not head_request and status >= 200 and status != 204 and status != 304


def response_framing(head_request: bool, status: int, has_length: bool, version: str) -> int:
    """How a response body is delimited to the client: ``BODY_NONE`` when it has none,
    ``BODY_LENGTH`` when its Content-Length is relayed, otherwise (the upstream chunked
    it or ends it by closing) ``BODY_CHUNKED`` for an HTTP/1.1 client and ``BODY_CLOSE``
    for an HTTP/1.0 one, which cannot read chunks."""
    if not response_has_body(head_request, status):
        return BODY_NONE
    if has_length:
        return BODY_LENGTH
    return BODY_CHUNKED if version == "1.1" else BODY_CLOSE


# hop-by-hop fields --------------------------------------------------------------------
HOP_BY_HOP: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "trailer", "upgrade", "http2-settings", "content-length", "expect",
    }
)  # fmt: skip
#: what the proxy drops from a request before adding its own forwarding fields.
FORWARDED: Final = HOP_BY_HOP | {"x-forwarded-for", "x-forwarded-proto"}
_HOP_BY_HOP_RAW: Final = frozenset(name.encode() for name in HOP_BY_HOP)
#: Connection values that name no other field (upgrade is hop-by-hop itself).
PLAIN_CONNECTION: Final = frozenset(
    {"keep-alive", "close", "Keep-Alive", "Close", "upgrade", "Upgrade"}
)
_PLAIN_CONNECTION_RAW: Final = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})


def strip_hop_by_hop(
    headers: Headers, drop: frozenset[str] = HOP_BY_HOP, has_connection: bool = True
) -> list[tuple[str, str]]:
    """The fields to forward: ``drop`` and every field a Connection field names removed.
    ``has_connection=False`` says the parser saw no Connection field (no scan for it)."""
    if not has_connection:
        return [(k, v) for k, v in headers if k not in drop]
    connection = headers.get_all("connection")
    if not connection or (len(connection) == 1 and connection[0] in PLAIN_CONNECTION):
        return [(k, v) for k, v in headers if k not in drop]
    # Fields named in Connection are hop-by-hop too (RFC 9110 7.6.1).
    extra = {t.strip().lower() for v in connection for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in drop and k not in extra]


def relay_fields(raw: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes | None]:
    """An upstream response's field lines for the client, straight from the parser's
    bytes (lower-case names): hop-by-hop fields (and those Connection names) dropped,
    Content-Length kept and also returned (``None`` when absent)."""
    length = None
    named: set[bytes] | None = None
    lines = []
    for name, value in raw:
        if name in _HOP_BY_HOP_RAW:
            if name == b"content-length":
                length = value
                lines.append(b"content-length: %s\r\n" % value)
            elif name == b"connection" and value not in _PLAIN_CONNECTION_RAW:
                named = named or set()
                named.update(t.strip().lower() for t in value.split(b","))
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    if named:
        lines = [line for line in lines if line.split(b":", 1)[0] not in named]
    return b"".join(lines), length


def client_fields(response: Response) -> tuple[Headers | bytes, bool]:
    """An upstream response's fields for the client, hop-by-hop ones dropped (encoded
    straight from the parser's bytes while no policy read them), and whether a
    Content-Length (kept) frames its body."""
    raw = response.raw_head
    if raw is not None:
        fields, raw_length = relay_fields(raw)
        return fields, raw_length is not None
    length = response.headers.get("content-length")
    headers = Headers._trusted(strip_hop_by_hop(response.headers))
    if length is None:
        return headers, False
    headers._add_trusted("content-length", length)
    return headers, True


# bytes on the wire -------------------------------------------------------------------
#: the interim answer to ``Expect: 100-continue``, given by the proxy itself (as Envoy does).
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: the end of a chunked body (no trailers: the proxy forwards none).
LAST_CHUNK: Final = b"0\r\n\r\n"


def expects_continue(expect: str | None) -> bool:
    """Whether an Expect value asks for ``100 Continue`` before the body is sent."""
    return expect is not None and expect.lower() == "100-continue"


def request_head(method: str, target: str, fields: bytes) -> bytes:
    """A request head from encoded field lines (``Headers.encode()``)."""
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + fields + b"\r\n"


def response_head(status: int, reason: str, fields: bytes, close: bool, chunked: bool) -> bytes:
    """A response head from encoded field lines without hop-by-hop fields: ``close``
    adds ``connection: close``, ``chunked`` the chunked framing field; an empty
    ``reason`` is the status's usual one."""
    if close:
        fields += b"connection: close\r\n"
    if chunked:
        fields += b"transfer-encoding: chunked\r\n"
    line = f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}\r\n"
    return line.encode("latin-1") + fields + b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    """``data`` as one chunk; nothing for no data (a zero-size chunk ends the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
