"""HTTP/1.1 framing on the proxy's two sides: which headers are hop-by-hop, how a
request body goes upstream, how a response body is chunked to the client, and the
request id Envoy users expect."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sidemesh.datapath.body import BodyNotReplayable, RequestBody
from sidemesh.datapath.messages import Headers
from sidemesh.datapath.pool import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from sidemesh.datapath.downstream import DownstreamConnection

__all__ = [
    "FORWARDED",
    "HOP_BY_HOP",
    "ChunkedSink",
    "pump_body",
    "relay_fields",
    "request_id",
    "strip_hop_by_hop",
]

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "trailer", "upgrade", "http2-settings", "content-length", "expect",
    }
)  # fmt: skip
FORWARDED = HOP_BY_HOP | {"x-forwarded-for", "x-forwarded-proto"}
_HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)
_PLAIN_CONNECTION_RAW = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})


#: what the client is told for a failure before any response head (Envoy's wording).
def request_id() -> str:
    """A random (version 4) UUID, as Envoy generates for ``x-request-id``; formatted
    by hand because ``uuid.uuid4()`` costs several times more per request."""
    h = "%032x" % ((random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62)) | (4 << 76) | (2 << 62))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "Keep-Alive", "Close"})


def strip_hop_by_hop(
    headers: Headers, drop: frozenset[str] = HOP_BY_HOP, has_connection: bool = True
) -> list[tuple[str, str]]:
    """The fields to forward: ``drop`` and every field a Connection field names removed.
    ``has_connection=False`` says the parser saw no Connection field (no scan for it)."""
    if not has_connection:
        return [(k, v) for k, v in headers if k not in drop]
    connection = headers.get_all("connection")
    if not connection or (len(connection) == 1 and connection[0] in _PLAIN_CONNECTION):
        return [(k, v) for k, v in headers if k not in drop]
    # Fields named in Connection are hop-by-hop too (RFC 9110 7.6.1).
    extra = {t.strip().lower() for v in connection for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in drop and k not in extra]


def relay_fields(raw: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes | None]:
    """An upstream response's field lines for the client, straight from the parser's
    bytes: hop-by-hop fields (and those Connection names) dropped, Content-Length kept
    and also returned (``None`` when absent)."""
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


class ChunkedSink:
    __slots__ = ("_conn",)

    def __init__(self, conn: DownstreamConnection) -> None:
        self._conn = conn

    def write_body(self, data: bytes) -> None:
        if data:
            self._conn.write_body(b"%x\r\n%s\r\n" % (len(data), data))

    def pause_source(self) -> bool:
        return self._conn.pause_source()


async def pump_body(upstream: UpstreamConnection, body: RequestBody) -> None:
    """Stream the request body upstream (re-chunked when it came chunked)."""
    try:
        reader = body.reader()
        while (chunk := await reader.next()) is not None:
            if body.chunked:
                await upstream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                await upstream.write(chunk)
        if body.chunked:
            await upstream.write(b"0\r\n\r\n")
        upstream.body_sent = True
    except (UpstreamError, BodyNotReplayable):
        upstream.close()
