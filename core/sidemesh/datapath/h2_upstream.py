"""HTTP/2 to an endpoint: one connection carries many requests, each on its own stream.

Built on the ``h2`` library (sans-io): the proxy owns the socket and the event loop.
Flow control is end to end: response body bytes are acknowledged to the upstream
(WINDOW_UPDATE) only while the client takes them, so a slow client makes the upstream
wait instead of the proxy buffering a whole stream; request bodies are sent as the
upstream's windows allow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidemesh.datapath.body import BodyNotReplayable, RequestBody
from sidemesh.datapath.deadlines import sweeper
from sidemesh.datapath.exchange import BodySink, RawHead, UpstreamError, UpstreamExchange
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.h2_fields import new_connection, request_fields
from sidemesh.datapath.limits import ConnectionLimit
from sidemesh.datapath.messages import Request

__all__ = ["H2Upstream", "H2UpstreamStream"]

#: flow-control windows the proxy grants an upstream: per stream, and per connection.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
_DEFAULT_WINDOW = 65535


def _closed(message: str) -> UpstreamError:
    return UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, message)


class H2Upstream(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint and its streams."""

    def __init__(self, on_close: Callable[[H2Upstream], None], auto: bool) -> None:
        self._on_close = on_close
        #: ``protocol: auto``: HTTP/2 only if the server chooses it by ALPN.
        self.auto = auto
        self.h2 = new_connection(True, {
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpstreamStream] = {}
        self.closed = False
        #: the upstream sent GOAWAY: no new streams.
        self.going_away = False
        #: streams opened on this connection so far.
        self.opened = 0
        self.tls = False
        #: ``protocol: auto`` and the server chose HTTP/1.1 by ALPN: no preface was sent.
        self.http1 = False
        self.limit: ConnectionLimit | None = None
        self._writable: asyncio.Future[None] | None = None

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls = ssl_object is not None
        self._loop = asyncio.get_running_loop()
        self.sweeper = sweeper(self._loop)
        if self.auto and (ssl_object is None or ssl_object.selected_alpn_protocol() != "h2"):
            self.http1 = True
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.flush()
            self._fail_all(UpstreamError(ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
                                         f"upstream HTTP/2 protocol error: {exc}"))
            self.close()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_close(self)
        reason = f"upstream connection closed: {exc}" if exc else "upstream closed the connection"
        self._fail_all(_closed(reason))
        self._wake_writers()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # events ------------------------------------------------------------------------
    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_head(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                code = getattr(event.error_code, "name", event.error_code)
                stream.fail(_closed(f"upstream reset the stream: {code}"))
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_writers()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            # Streams above the last one the upstream processed never reached its
            # application: they fail as a closed connection (retried on a new one).
            for stream_id in [i for i in self.streams if i > last]:
                self.streams.pop(stream_id).fail(_closed("upstream sent GOAWAY"))
            if not self.streams:
                self.close()

    def _fail_all(self, error: UpstreamError) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(error)

    def _wake_writers(self) -> None:
        for stream in list(self.streams.values()):
            stream.wake_writer()

    # used by streams -----------------------------------------------------------------
    def usable(self) -> bool:
        if self.closed or self.going_away:
            return False
        most = self.h2.remote_settings.max_concurrent_streams
        return len(self.streams) < most

    def _ack(self, size: int, stream_id: int) -> None:
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(size, stream_id)
            self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    async def writable(self) -> None:
        if self._writable is not None and not self._writable.done():
            await self._writable

    def forget(self, stream: H2UpstreamStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if self.going_away and not self.streams:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.h2.close_connection()
            self.flush()
            self.transport.close()
        self._on_close(self)


class H2UpstreamStream(UpstreamExchange):
    """One request on an :class:`H2Upstream` connection."""

    def __init__(self, connection: H2Upstream) -> None:
        super().__init__()
        self.connection = connection
        self.sweeper = connection.sweeper
        self.protocol = "HTTP/2"
        self.stream_id = 0
        self.reused = connection.opened > 0
        self._loop = connection._loop
        self._window: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None
        self._pending: list[bytes] = []
        self._owed = 0
        self._head_only = False

    def start(
        self, request: Request, body: RequestBody | None, head_only: bool, timeout: float | None
    ) -> asyncio.Future[RawHead]:
        connection = self.connection
        loop = connection._loop
        self._head = loop.create_future()
        self._head_only = head_only
        if timeout is not None:
            self.expires = loop.time() + timeout
            self.sweeper.watch(self)
        h2conn = connection.h2
        self.stream_id = h2conn.get_next_available_stream_id()
        connection.streams[self.stream_id] = self
        connection.opened += 1
        scheme = "https" if connection.tls else "http"
        h2conn.send_headers(
            self.stream_id, request_fields(request, scheme), end_stream=body is None
        )
        connection.flush()
        if body is not None:
            self.body_task = asyncio.ensure_future(self._pump(body))
        return self._head

    async def _pump(self, body: RequestBody) -> None:
        connection = self.connection
        h2conn = connection.h2
        try:
            reader = body.reader()
            while (chunk := await reader.next()) is not None:
                view = memoryview(chunk)
                while view:
                    if self._error is not None or self.closed:
                        raise self._error or _closed("stream closed")
                    window = min(h2conn.local_flow_control_window(self.stream_id),
                                 h2conn.max_outbound_frame_size)
                    if window <= 0:
                        self._window = connection._loop.create_future()
                        await self._window
                        continue
                    h2conn.send_data(self.stream_id, bytes(view[:window]))
                    view = view[window:]
                    connection.flush()
                    await connection.writable()
            if not self.closed:
                h2conn.end_stream(self.stream_id)
                connection.flush()
            self.body_sent = True
        except (UpstreamError, BodyNotReplayable, h2.exceptions.ProtocolError):
            self.close()

    def wake_writer(self) -> None:
        window = self._window
        if window is not None and not window.done():
            window.set_result(None)

    # events from the connection --------------------------------------------------------
    def on_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        status = 0
        fields = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name, value))
        head = self._head
        if head is not None and not head.done():
            head.set_result((status, fields, True, self._head_only))

    def on_data(self, data: bytes, size: int) -> None:
        sink = self._sink
        if sink is None:
            self._pending.append(data)
            self._owed += size
            return
        if not self._head_only:
            sink.write_body(data)
        if sink.pause_source():
            self._owed += size
        else:
            self.connection._ack(size, self.stream_id)

    def on_end(self) -> None:
        if self._settle():
            self.cancel_deadline()
            self.connection.forget(self)

    def fail(self, error: UpstreamError) -> None:
        self.wake_writer()
        if self._reject(error):
            self.cancel_deadline()

    # the exchange ------------------------------------------------------------------
    def attach(self, sink: BodySink) -> None:
        self._sink = sink
        pending, self._pending = self._pending, []
        if not self._head_only:
            for chunk in pending:
                if chunk:
                    sink.write_body(chunk)
        self.resume()

    def resume(self) -> None:
        owed = self._owed
        if owed and not self.closed:
            sink = self._sink
            if sink is None or not sink.pause_source():
                self._owed = 0
                self.connection._ack(owed, self.stream_id)

    def release(self) -> None:
        self.cancel_deadline()
        self._sink = None
        self.closed = True
        self.connection.forget(self)

    def close(self) -> None:
        self.cancel_deadline()
        self._sink = None
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()
        if self.closed:
            return
        self.closed = True
        # Whoever waits for this exchange (a response streaming to a client that reset
        # its own stream) must not wait for ever.
        self.fail(_closed("the exchange was abandoned"))
        connection = self.connection
        if not self._complete and self.stream_id and not connection.closed:
            # The stream may have closed meanwhile.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                connection.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            connection.flush()
        connection.forget(self)
