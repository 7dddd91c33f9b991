"""Body I/O on the proxy's two sides: a request body streamed upstream, a response body
chunked to the client (the bytes come from codec.py); and the request id Envoy users
expect."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sidemesh.datapath.body import BodyNotReplayable, RequestBody
from sidemesh.datapath.codec import LAST_CHUNK, encode_chunk
from sidemesh.datapath.pool import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from sidemesh.datapath.downstream import DownstreamConnection

__all__ = ["ChunkedSink", "pump_body", "request_id"]


def request_id() -> str:
    """A random (version 4) UUID, as Envoy generates for ``x-request-id``; formatted
    by hand because ``uuid.uuid4()`` costs several times more per request."""
    h = "%032x" % ((random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62)) | (4 << 76) | (2 << 62))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ChunkedSink:
    """The client side of a response body without Content-Length: each piece one chunk."""

    __slots__ = ("_conn",)

    def __init__(self, conn: DownstreamConnection) -> None:
        self._conn = conn

    def write_body(self, data: bytes) -> None:
        if data:
            conn = self._conn
            if not conn.closed:
                conn.bytes_sent += len(data)
            conn.write_raw(encode_chunk(data))

    def pause_source(self) -> bool:
        return self._conn.pause_source()


async def pump_body(upstream: UpstreamConnection, body: RequestBody) -> None:
    """Stream the request body upstream (re-chunked when it came chunked)."""
    try:
        reader = body.reader()
        chunked = body.chunked
        while (chunk := await reader.next()) is not None:
            await upstream.write(encode_chunk(chunk) if chunked else chunk)
        if chunked:
            await upstream.write(LAST_CHUNK)
        upstream.body_sent = True
    except (UpstreamError, BodyNotReplayable):
        upstream.close()
