"""Keep-alive connections to one endpoint, built for proxying.

One pool per (endpoint, TLS identity). No global lock: a pool is a deque of idle
connections touched only from the event loop. A response body is pushed straight from
the upstream socket into a sink (the downstream writer), with flow control both ways,
so bodies stream with flat memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from sidemesh.datapath.body import BodyNotReplayable, RequestBody
from sidemesh.datapath.codec import LAST_CHUNK, encode_chunk, request_head, response_has_body
from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.deadlines import sweeper
from sidemesh.datapath.exchange import BodySink, RawHead, UpstreamError, UpstreamExchange
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.limits import ConnectionLimit, PendingOverflow
from sidemesh.datapath.messages import Request
from sidemesh.datapath.tls_bridge import open_tls
from sidemesh.datapath.writes import WriteBatch, write_batch

__all__ = ["ConnectionPool", "UpstreamConnection", "UpstreamError"]

MAX_IDLE = 256
RESPONSE_HEAD_LIMIT = 64 * 1024


class UpstreamConnection(UpstreamExchange):
    """One HTTP/1.1 connection to an endpoint; one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__()
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._sink: BodySink | None = None
        self._pending_body: list[bytes] = []
        self._skip_body = False
        self._writable: asyncio.Future[None] | None = None
        self._reuse = False
        self._until_close = False
        #: the response head carries Content-Length or Transfer-Encoding.
        self._framed = False

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        # Kept: each get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self.sweeper = sweeper(self._loop)
        self.batch: WriteBatch = write_batch(self._loop)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # After a 101 the bytes are the new protocol's: kept, unread, for whoever
            # takes the connection over (tunnel.py) or closes it.
            self._pending_body.append(data[exc.args[0] :])
            cast(asyncio.Transport, self.transport).pause_reading()
        except httptools.HttpParserError as exc:
            self.fail(
                UpstreamError(
                    ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
                    f"upstream sent an invalid response: {exc}",
                )
            )
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._until_close and exc is None:
            # A body without Content-Length or chunking ends when the upstream closes.
            self._finish(reuse=False)
        reason = f"upstream connection closed: {exc}" if exc else "upstream closed the connection"
        self.fail(UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, reason))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._head_size = 0
        self._framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > RESPONSE_HEAD_LIMIT:
            raise httptools.HttpParserError("response headers too large")
        key = name.lower()
        if key == b"content-length" or key == b"transfer-encoding":
            self._framed = True
        self._headers.append((key, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim responses (100 Continue, 103 Early Hints) are answered by the
            # proxy itself; the client sees only the final one. A 101 ends HTTP on the
            # connection: forward.py decides whether it opens a tunnel (tunnel.py).
            return
        self._until_close = not self._framed and response_has_body(self._skip_body, status)
        head = self._head
        if head is not None and not head.done():
            head.set_result(
                (status, self._headers, self.parser.should_keep_alive(), self._skip_body)
            )
        if self._skip_body:
            # llhttp cannot be told a response answers HEAD; finish here and do not
            # reuse the connection, since the parser would wait for a body.
            self._finish(reuse=False)

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            return  # a body after a HEAD response is the upstream's error; never relay it
        sink = self._sink
        if sink is None:
            self._pending_body.append(body)
            return
        sink.write_body(body)
        if sink.pause_source() and self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self._finish(reuse=self.parser.should_keep_alive())

    # exchange ----------------------------------------------------------------------
    def _finish(self, reuse: bool) -> None:
        if self._settle():
            self._reuse = reuse

    def fail(self, error: UpstreamError) -> None:
        self._reject(error)

    def start(
        self, request: Request, body: RequestBody | None, head_only: bool, timeout: float | None
    ) -> asyncio.Future[RawHead]:
        loop = self._loop
        if timeout is not None:
            self.expires = loop.time() + timeout
            self.sweeper.watch(self)
        self._head = loop.create_future()
        self._done = None
        self._complete = False
        self._until_close = False
        self._error = None
        self._sink = None
        self._pending_body = []
        self._skip_body = head_only
        self._reuse = False
        self.body_task = None
        self.body_sent = False
        assert self.transport is not None
        head = request_head(request.method, request.path, request.headers.encode())
        if body is None:
            # With the other requests of this loop turn (writes.py).
            self.batch.write(self.transport, head)
        else:
            self.batch.flush()
            self.transport.write(head)
            self.body_task = asyncio.ensure_future(self._pump(body))
        return self._head

    async def _pump(self, body: RequestBody) -> None:
        # Re-chunked when it came chunked.
        try:
            reader = body.reader()
            chunked = body.chunked
            while (chunk := await reader.next()) is not None:
                await self.write(encode_chunk(chunk) if chunked else chunk)
            if chunked:
                await self.write(LAST_CHUNK)
            self.body_sent = True
        except (UpstreamError, BodyNotReplayable):
            self.close()

    async def write(self, data: bytes) -> None:
        """Write request body bytes, waiting while the upstream is not reading."""
        if self.closed or self.transport is None:
            raise UpstreamError(
                ResponseFlag.UPSTREAM_CONNECTION_TERMINATION,
                "upstream closed the connection while sending the body",
            )
        self.transport.write(data)
        if self._writable is not None and not self._writable.done():
            await self._writable

    def attach(self, sink: BodySink) -> None:
        self._sink = sink
        for chunk in self._pending_body:
            if chunk:
                sink.write_body(chunk)
        self._pending_body = []

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def release(self) -> None:
        self.cancel_deadline()
        self._sink = None
        self._head = None
        self._done = None
        if self._reuse and not self.closed:
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.cancel_deadline()
        self._sink = None
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)


class ConnectionPool:
    """Idle keep-alive connections to one endpoint with one TLS identity."""

    def __init__(
        self,
        host: str,
        port: int,
        setup: Callable[[], ConnectionSetup] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._setup = setup
        self._idle: deque[UpstreamConnection] = deque()
        self._all: set[UpstreamConnection] = set()

    @property
    def size(self) -> int:
        return len(self._all)

    def take(self) -> UpstreamExchange | None:
        """An idle connection, most recently used first, without waiting."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def acquire(
        self, connect_timeout: float, fresh: bool = False, limit: ConnectionLimit | None = None
    ) -> UpstreamExchange:
        """An idle connection (most recently used first), or a new one. With ``limit``,
        a new connection needs a slot of the cluster's limit: without one the request
        waits (pending) for a released connection or a slot, or fails with ``UO``."""
        if not fresh and (idle := self.take()) is not None:
            return idle
        if limit is None:
            return await self._connect(connect_timeout)
        if not limit.reserve():
            try:
                handed = await limit.wait(self)
            except PendingOverflow as exc:
                raise UpstreamError(
                    ResponseFlag.UPSTREAM_OVERFLOW, f"upstream overflow: {exc}"
                ) from None
            if handed is not None:
                conn = cast(UpstreamConnection, handed)
                conn.reused = True
                return conn
        try:
            conn = await self._connect(connect_timeout)
        except BaseException:
            limit.release()
            raise
        conn.limit = limit
        return conn

    async def _connect(self, connect_timeout: float) -> UpstreamConnection:
        conn = cast(
            UpstreamConnection, await self.open(connect_timeout, lambda: UpstreamConnection(self))
        )
        self._all.add(conn)
        return conn

    def adopt(self, transport: asyncio.Transport) -> UpstreamConnection:
        """Take over a connection opened for another protocol (HTTP/2 offered by ALPN,
        HTTP/1.1 chosen)."""
        conn = UpstreamConnection(self)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        self._all.add(conn)
        return conn

    async def open(
        self, connect_timeout: float, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Protocol:
        """A new connection to the endpoint with the pool's TLS settings, its protocol
        made by ``factory``; the TLS peer verified."""
        loop = asyncio.get_running_loop()
        try:
            setup = self._setup() if self._setup is not None else None
        except Exception as exc:  # e.g. no certificate yet: this attempt cannot connect
            raise UpstreamError(
                ResponseFlag.UPSTREAM_CONNECTION_FAILURE, f"connection setup failed: {exc}"
            ) from None
        ssl_context: ssl.SSLContext | None = setup.ssl_context if setup else None
        try:
            async with asyncio.timeout(connect_timeout):
                if ssl_context is None:
                    transport, protocol = await loop.create_connection(
                        factory, self.host, self.port
                    )
                else:
                    hostname = setup.server_hostname if setup is not None else None
                    transport, protocol = await open_tls(
                        loop, factory, self.host, self.port, ssl_context, hostname
                    )
        except TimeoutError:
            raise UpstreamError(
                ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
                f"connect to {self.host}:{self.port} timed out after {connect_timeout}s",
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(
                ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
                f"connect to {self.host}:{self.port} failed: {exc}",
            ) from None
        if setup is not None and setup.verify_peer is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            problem = setup.verify_peer(der) if der else "upstream presented no certificate"
            if problem is not None:
                transport.close()
                raise UpstreamError(
                    ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
                    f"upstream {self.host}:{self.port}: {problem}",
                )
        return protocol

    def put(self, conn: UpstreamConnection) -> None:
        limit = conn.limit
        if limit is not None and limit.pending:
            # Requests wait for a connection: this one goes to a request for the same
            # endpoint, or is closed so its slot reaches a request for another.
            if not limit.hand_over(self, conn):
                conn.close()
            return
        if len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        limit = conn.limit
        if limit is not None:
            # Called on close and again on connection_lost: give the slot back once.
            conn.limit = None
            limit.release()
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
