"""HTTP/2 from clients: h2c with prior knowledge on a plain listener, ALPN ``h2`` on TLS.

A client connection starts as HTTP/1.1 (downstream.py); its first bytes (the HTTP/2
preface) or the TLS handshake's ALPN hand it to an :class:`H2Session`, which runs each
stream through the same handler as an HTTP/1.1 request: policies see the same
``Request`` (``version == "2"``). Flow control is end to end: a stream's request body is
acknowledged (WINDOW_UPDATE) only as the upstream takes it, and its response body is
sent as the client's windows allow, the upstream paused meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import h2.events
import h2.exceptions
import h2.settings

from sidemesh.datapath.body import NO_BODY, RequestBody
from sidemesh.datapath.codec import (
    CodecError,
    check_field_limits,
    check_target_length,
    field_name,
    request_target,
)
from sidemesh.datapath.h2_fields import new_connection
from sidemesh.datapath.h2_stream import Connection, H2Stream
from sidemesh.datapath.messages import Headers, Request
from sidemesh.datapath.model import Http2Settings
from sidemesh.datapath.paths import PathRejected, normalize_path

__all__ = ["PREFACE", "H2Session"]

#: the first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DEFAULT_WINDOW = 65535
#: request fields the core reads itself (see downstream.CORE_FIELDS), plus HTTP/2's own.
_CORE = frozenset(
    {"content-length", "x-request-id", "x-forwarded-for", "te", "grpc-timeout",
     "content-type"}
)  # fmt: skip


class H2Session(asyncio.Protocol):
    """One client's HTTP/2 connection: the streams of ``conn`` (which stays the
    connection the sidecar counts, sweeps and drains)."""

    def __init__(self, conn: Connection, settings: Http2Settings) -> None:
        self.conn = conn
        self.h2 = new_connection(False, {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_stream_window_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        })
        self.connection_window = settings.initial_connection_window_size
        self.max_header_list_size = settings.max_header_list_size
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.going_away = False
        self._writable: asyncio.Future[None] | None = None
        self._flush_scheduled = False

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.h2.initiate_connection()
        if self.connection_window > _DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(self.connection_window - _DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.conn.reads += 1
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 queued the GOAWAY naming the error: send it, then close.
            self.flush()
            self.abort()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.reset_by_peer()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        for stream in list(self.streams.values()):
            stream.resume_upstream()

    def writing_paused(self) -> bool:
        return self._writable is not None and not self._writable.done()

    # events ------------------------------------------------------------------------
    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.reset_by_peer()
            self._update_busy()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in list(self.streams.values()):
                    stream.send_pending()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                stream.send_pending()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            if not self.streams:
                self.close()

    def _request(self, stream_id: int, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        conn = self.conn
        conn.requests += 1
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self._update_busy()
        try:
            request = self._parse(stream, raw)
        except CodecError as exc:
            stream.refuse(exc.status, exc.message, (b":method", b"HEAD") in raw)
            return
        body = NO_BODY
        if not ended:
            # No Content-Length: an HTTP/1.1 upstream gets the body chunked.
            body = RequestBody("content-length" not in request._core, stream.pause_reading,
                               stream.resume_reading)
            stream.body = body
        task = self._loop.create_task(conn.handler(stream, request, body))
        task.add_done_callback(stream.handled)
        stream.task = task

    def _parse(self, stream: H2Stream, raw: list[tuple[bytes, bytes]]) -> Request:
        method = path = authority = ""
        scheme = self.conn.scheme
        fields: list[tuple[str, str]] = []
        core: dict[str, str] = {}
        cookies: list[str] = []
        size = 0
        # SETTINGS_MAX_HEADER_LIST_SIZE counts 32 bytes per field on top of name and
        # value (RFC 9113 6.5.2); checked here, as a client may send before it saw it.
        listed = sum(len(name) + len(value) + 32 for name, value in raw)
        if listed > self.max_header_list_size:
            raise CodecError(431, f"header list larger than {self.max_header_list_size} bytes")
        for name, value in raw:
            if name[:1] == b":":
                if name == b":method":
                    method = value.decode("latin-1")
                elif name == b":path":
                    check_target_length(len(value))
                    path = value.decode("latin-1")
                elif name == b":authority":
                    authority = value.decode("latin-1")
                continue
            size += len(name) + len(value) + 4
            check_field_limits(len(fields), size)
            key = field_name(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key == "cookie":
                # HTTP/2 splits cookies into fields; an HTTP/1.1 upstream needs one.
                cookies.append(text)
                continue
            if key == "host":
                authority = authority or text
                continue
            fields.append((key, text))
            if key in _CORE:
                core.setdefault(key, text)
        if cookies:
            fields.append(("cookie", "; ".join(cookies)))
        target, absolute = request_target(method, path.encode("latin-1"))
        authority = absolute or authority
        if not authority:
            raise CodecError(400, "HTTP/2 request without :authority or host")
        fields.insert(0, ("host", authority))
        paths = self.conn.paths
        if paths.normalize and target != "*":
            try:
                target = normalize_path(target, paths.merge_slashes, paths.escaped_slashes)
            except PathRejected as exc:
                raise CodecError(400, str(exc)) from None
        request = Request(method, target, authority.lower(), Headers._trusted(fields),
                          self.conn.info, self.conn.listener, scheme, "2")
        request._core = core
        return request

    def _update_busy(self) -> None:
        self.conn.busy = bool(self.streams)

    # used by streams -----------------------------------------------------------------
    def ack(self, size: int, stream_id: int) -> None:
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(size, stream_id)
            self.schedule_flush()

    def finished(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        self._update_busy()
        if not stream.keep_alive:
            self.goaway()
        if self.going_away and not self.streams:
            self.close()

    def schedule_flush(self) -> None:
        # Everything a stream does in one turn of the loop goes out in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client to open no more streams (drain, or a stream's connection
        close); the connection closes once its streams are done."""
        self._send_goaway()
        if not self.streams:
            self.close()

    def _send_goaway(self) -> None:
        if not self.going_away and not self.closed:
            self.going_away = True
            self.h2.close_connection()
            self.schedule_flush()

    def close(self) -> None:
        self._send_goaway()
        self.flush()
        self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
