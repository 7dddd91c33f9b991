"""One stream of a client's HTTP/2 connection (h2_downstream.py): its request body in,
its response out as the client's flow-control windows allow."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import h2.connection
import h2.errors
import h2.exceptions

from sidemesh.datapath.body import RequestBody
from sidemesh.datapath.codec import REASONS
from sidemesh.datapath.connections import ConnectionInfo
from sidemesh.datapath.exchange import ClientSide, UpstreamExchange
from sidemesh.datapath.h2_fields import response_fields, trailer_fields
from sidemesh.datapath.messages import Request, Response
from sidemesh.datapath.model import PathNormalization

__all__ = ["STREAM_BUFFER", "Connection", "H2Stream", "Session"]

#: response body bytes a stream holds for a client that is slow to open its window,
#: before the upstream is paused.
STREAM_BUFFER = 64 * 1024


class Connection(Protocol):
    """What a session uses of the client connection it took over (downstream.py)."""

    listener: str
    scheme: str
    info: ConnectionInfo
    paths: PathNormalization
    requests: int
    reads: int
    busy: bool
    handler: Callable[[ClientSide, Request, RequestBody], Coroutine[Any, Any, None]]
    on_rejected: Callable[[ClientSide, int, str], None] | None

    def connection_lost(self, exc: Exception | None) -> None: ...


class Session(Protocol):
    """What a stream uses of its connection's session (h2_downstream.H2Session)."""

    conn: Connection
    h2: h2.connection.H2Connection

    def ack(self, size: int, stream_id: int) -> None: ...

    def finished(self, stream: H2Stream) -> None: ...

    def schedule_flush(self) -> None: ...

    def writing_paused(self) -> bool: ...


class H2Stream(ClientSide):
    """One request and its response on an :class:`H2Session`."""

    def __init__(self, session: Session, stream_id: int) -> None:
        conn = session.conn
        super().__init__(conn.listener, conn.scheme)
        self.session = session
        self.stream_id = stream_id
        self.info = conn.info
        self.body: RequestBody | None = None
        #: the handler's task: the loop keeps only a weak reference to it.
        self.task: asyncio.Task[None] | None = None
        self._upstream: UpstreamExchange | None = None
        self._pending: deque[bytes] = deque()
        self._buffered = 0
        self._ending = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        #: the response head, held to go out with the first body bytes or the end (a
        #: trailers-only answer must end the stream on its HEADERS frame).
        self._head: list[tuple[bytes, bytes]] | None = None
        self._no_body = False
        self._reading_paused = False
        self._owed = 0
        self._ended = False

    # the request -------------------------------------------------------------------
    def on_data(self, data: bytes, size: int) -> None:
        body = self.body
        if body is None:
            self.session.ack(size, self.stream_id)
            return
        body.feed(data)
        if self._reading_paused:
            self._owed += size
        else:
            self.session.ack(size, self.stream_id)

    def on_end(self) -> None:
        if self.body is not None:
            self.body.feed_eof()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        owed, self._owed = self._owed, 0
        self.session.ack(owed, self.stream_id)

    def reset_by_peer(self) -> None:
        """The client reset the stream (or the connection is gone)."""
        self.closed = True
        if self.body is not None:
            self.body.abort()
        self._pending.clear()
        upstream = self._upstream
        if upstream is not None:
            upstream.close()

    def refuse(self, status: int, message: str, head_only: bool = False) -> None:
        """A request refused before routing: answered here, never forwarded."""
        conn = self.session.conn
        error = REASONS.get(status, "error")
        payload = {"error": error, "message": message}
        self.write_simple(Response.json(status, payload), head_only)
        if conn.on_rejected is not None:
            conn.on_rejected(self, status, message)

    # the response ------------------------------------------------------------------
    def begin_response(self, request: Request, response: Response) -> None:
        self._hold_head(response_fields(response), request.method == "HEAD")

    def _hold_head(self, fields: list[tuple[bytes, bytes]], no_body: bool) -> None:
        self.response_started = True
        self._head = fields
        self._no_body = no_body

    def continue_100(self) -> None:
        if not self.closed:
            self.session.h2.send_headers(self.stream_id, [(b":status", b"100")])
            self.session.schedule_flush()

    def flush_head(self) -> None:
        self.send_pending()

    def write_body(self, data: bytes) -> None:
        if self.closed or self._ended or self._no_body or not data:
            return
        self.bytes_sent += len(data)
        self._pending.append(data)
        self._buffered += len(data)
        self.send_pending()

    def pause_source(self) -> bool:
        return self._buffered > STREAM_BUFFER or self.session.writing_paused()

    def set_upstream(self, upstream: UpstreamExchange | None) -> None:
        self._upstream = upstream

    def resume_upstream(self) -> None:
        upstream = self._upstream
        if upstream is not None and not self.pause_source():
            upstream.resume()

    def end_response(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self._trailers = trailer_fields(trailers) if trailers else None
        self._ending = True
        self.send_pending()

    def write_simple(self, response: Response, head_only: bool = False) -> None:
        body = response.body
        fields = response_fields(response)
        fields.append((b"content-length", b"%d" % len(body)))
        if response.headers.get("server") is None:
            fields.append((b"server", b"sidemesh"))
        self._hold_head(fields, head_only)  # no_body: write_body drops what follows
        self.write_body(body)
        self.end_response(None)

    def send_pending(self) -> None:
        """Send what the windows allow; end the stream once everything is out."""
        if self.closed or not self.response_started:
            return
        h2conn = self.session.h2
        stream_id = self.stream_id
        pending = self._pending
        try:
            head = self._head
            if head is not None:
                self._head = None
                end = self._no_body or (self._ending and not pending and not self._trailers)
                h2conn.send_headers(stream_id, head, end_stream=end)
                if end:
                    self._ending, self._ended = False, True
            while pending:
                window = min(h2conn.local_flow_control_window(stream_id),
                             h2conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = pending[0]
                if len(chunk) <= window:
                    pending.popleft()
                else:
                    pending[0] = chunk[window:]
                    chunk = chunk[:window]
                h2conn.send_data(stream_id, chunk)
                self._buffered -= len(chunk)
            if self._ending and not pending:
                self._ending = False
                if self._trailers:
                    h2conn.send_headers(stream_id, self._trailers, end_stream=True)
                elif not self._ended:
                    h2conn.end_stream(stream_id)
                self._ended = True
        except h2.exceptions.ProtocolError:
            # The client reset the stream or closed the connection meanwhile.
            self.closed = True
            pending.clear()
        self.session.schedule_flush()
        if self._ended or self.closed:
            self._done()
        else:
            self.resume_upstream()

    def handled(self, task: asyncio.Task[None]) -> None:
        if not self.response_started:
            self.close()  # the handler answered nothing: never leave the stream open

    def abort(self) -> None:
        self._reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _done(self) -> None:
        self.response_done = True
        self.session.finished(self)

    def close(self) -> None:
        self._reset(h2.errors.ErrorCodes.CANCEL)

    def _reset(self, code: h2.errors.ErrorCodes) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        if not self._ended:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.session.h2.reset_stream(self.stream_id, code)
            self.session.schedule_flush()
        self._done()

