"""Header lists for HTTP/2 (RFC 9113 8.2): pseudo-header fields first, no
connection-specific fields, lower-case names, bytes as on the wire."""

from __future__ import annotations

from typing import Final

from sidemesh.datapath.codec import HOP_BY_HOP, strip_hop_by_hop
from sidemesh.datapath.messages import Request, Response

__all__ = ["FORBIDDEN", "request_fields", "response_fields", "trailer_fields"]

#: fields HTTP/2 forbids (``te`` is allowed only as ``te: trailers``) or expresses as
#: a pseudo-header (``host`` is ``:authority``).
FORBIDDEN: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
     "te", "http2-settings"}
)  # fmt: skip
_FORBIDDEN_RAW: Final = frozenset(name.encode() for name in FORBIDDEN | HOP_BY_HOP) - {
    b"content-length"
}


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", "replace")


def request_fields(request: Request, scheme: str) -> list[tuple[bytes, bytes]]:
    """The header list of ``request`` sent upstream over HTTP/2."""
    headers = request.headers
    authority = headers.get("host") or request.host
    fields = [
        (b":method", _latin1(request.method)),
        (b":scheme", scheme.encode()),
        (b":authority", _latin1(authority)),
        (b":path", _latin1(request.path)),
    ]
    for name, value in headers:
        if name not in FORBIDDEN:
            fields.append((_latin1(name), _latin1(value)))
    te = request._core.get("te")
    if te is not None and "trailers" in te.lower():
        # gRPC servers expect it: it tells them every proxy on the way relays trailers.
        fields.append((b"te", b"trailers"))
    return fields


def response_fields(response: Response) -> list[tuple[bytes, bytes]]:
    """The header list of an upstream's (or the proxy's own) response for an HTTP/2
    client: ``:status`` and the fields, connection-specific ones dropped."""
    fields = [(b":status", b"%d" % response.status)]
    raw = response.raw_head
    if raw is not None:
        named = _connection_named(raw)
        for name, value in raw:
            if name not in _FORBIDDEN_RAW and (named is None or name not in named):
                fields.append((name, value))
        return fields
    length = response.headers.get("content-length")
    for key, text in strip_hop_by_hop(response.headers):
        fields.append((_latin1(key), _latin1(text)))
    if length is not None:
        fields.append((b"content-length", _latin1(length)))
    return fields


def trailer_fields(trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream's trailers for the client (no pseudo-header or hop-by-hop fields)."""
    return [(n, v) for n, v in trailers if not n.startswith(b":") and n not in _FORBIDDEN_RAW]


def _connection_named(raw: list[tuple[bytes, bytes]]) -> set[bytes] | None:
    named: set[bytes] | None = None
    for name, value in raw:
        if name == b"connection":
            named = named or set()
            named.update(t.strip().lower() for t in value.split(b","))
    return named
