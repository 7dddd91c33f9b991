"""What both sides of HTTP/2 share: a new ``h2`` connection, and header lists (RFC 9113
8.2: pseudo-header fields first, no connection-specific fields, lower-case names, bytes
as on the wire)."""

from __future__ import annotations

from typing import Final

import h2.config
import h2.connection
import h2.settings

from sidemesh.datapath.codec import HOP_BY_HOP, strip_hop_by_hop
from sidemesh.datapath.messages import Request, Response

__all__ = ["FORBIDDEN", "new_connection", "request_fields", "response_fields", "trailer_fields"]

#: fields HTTP/2 forbids (``te`` is allowed only as ``te: trailers``) or expresses as
#: a pseudo-header (``host`` is ``:authority``).
FORBIDDEN: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
     "te", "http2-settings"}
)  # fmt: skip
_FORBIDDEN_RAW: Final = frozenset(name.encode() for name in FORBIDDEN | HOP_BY_HOP) - {
    b"content-length"
}


def new_connection(
    client_side: bool, settings: dict[h2.settings.SettingCodes, int]
) -> h2.connection.H2Connection:
    """An ``h2`` connection announcing ``settings`` in its first SETTINGS frame."""
    # What the proxy sends is built from fields it parsed and checked already (lower
    # case, no connection-specific ones: see below); checking it again in h2 cost a tenth
    # of a request. What it receives is always checked.
    config = h2.config.H2Configuration(
        client_side=client_side, header_encoding=None,
        validate_outbound_headers=False, normalize_outbound_headers=False,
    )
    connection = h2.connection.H2Connection(config)
    connection.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
    return connection


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
