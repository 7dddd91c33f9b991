"""The downstream side: an asyncio protocol that parses HTTP/1.1 with httptools.

Parsing is strict (llhttp's defaults reject request smuggling: duplicate or signed
Content-Length, obs-fold, bare LF/CR, bad chunk sizes). On top of that the codec's
checks (codec.py) enforce what the parser leaves to the application: HTTP/1.0 or 1.1
only, a Host on HTTP/1.1, Content-Length and Transfer-Encoding never together, no
Upgrade with a body, limits on the URL (414) and on header count and size (431), no
CONNECT (501), header names with an underscore dropped, fields a Connection header
names dropped before routing (but Host and x-request-id), and the path normalized
(paths.py). A rejected request is answered and the connection closed; nothing of it
reaches an upstream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import httptools

from sidemesh.datapath.body import NO_BODY, RequestBody
from sidemesh.datapath.codec import (
    BODY_CHUNKED,
    BODY_NONE,
    PLAIN_CONNECTION,
    REASONS,
    CodecError,
    check_field_limits,
    check_target_length,
    check_upgrade,
    check_version,
    drop_nominated_fields,
    field_name,
    request_framing,
    request_host,
    request_target,
)
from sidemesh.datapath.connections import ConnectionInfo, describe_local
from sidemesh.datapath.exchange import ClientSide
from sidemesh.datapath.h1_response import Http1Responder
from sidemesh.datapath.messages import Headers, Request, Response
from sidemesh.datapath.model import ConnectionLimits, Http2Settings, PathNormalization
from sidemesh.datapath.paths import PathRejected, normalize_path
from sidemesh.datapath.upgrade_hold import UpgradeHold
from sidemesh.datapath.writes import write_batch

if TYPE_CHECKING:
    from sidemesh.datapath.h2_downstream import H2Session

__all__ = ["DownstreamConnection"]

#: the first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 3.4): an
#: HTTP/1.1 request line cannot start with them.
_H2_START = b"PRI"


#: fields the core reads itself; the parser notes their first value as it goes.
CORE_FIELDS = frozenset(
    {"host", "transfer-encoding", "content-length", "connection", "expect",
     "x-request-id", "x-forwarded-for", "upgrade"}
)  # fmt: skip
#: how long a connection closed after an early answer still takes (and drops) the
#: client's bytes: Envoy's delayed_close_timeout default.
LINGER = 1.0
_DEFAULT_PATHS = PathNormalization()
_DEFAULT_LIMITS = ConnectionLimits()
_DEFAULT_HTTP2 = Http2Settings()


def _parser(protocol: object) -> Any:
    parser = httptools.HttpRequestParser(protocol)
    # llhttp refuses a Content-Length *trailer* as if it were CL+TE in the head; the
    # codec refuses CL+TE in the head itself (request_framing), and trailers are dropped.
    parser.set_dangerous_leniencies(lenient_chunked_length=True)
    return parser


Handler = Callable[[ClientSide, Request, RequestBody], Coroutine[Any, Any, None]]


class DownstreamConnection(Http1Responder):
    """One client connection. Requests are handled one at a time, in order (pipelined
    requests wait their turn); the handler writes the response through this object."""

    def __init__(
        self,
        handler: Handler,
        listener: str,
        scheme: str,
        on_close: Callable[[Any], None],
        paths: PathNormalization = _DEFAULT_PATHS,
        limits: ConnectionLimits = _DEFAULT_LIMITS,
    ) -> None:
        super().__init__(listener, scheme)
        self.handler = handler
        self._on_close = on_close
        self.paths = paths
        self.limits = limits
        #: at the listener's connection cap: closed as soon as it is made.
        self.refused = False
        #: fill in ``info.local_address`` (when the access log uses it) and
        #: ``info.original_destination`` (on ``use_original_dst`` listeners): system calls.
        self.wants_local_address = False
        self.wants_original_dst = False
        #: told of each request refused before it reached the handler (status, reason).
        self.on_rejected: Callable[[ClientSide, int, str], None] | None = None
        #: the listener's HTTP/2 settings, and the session once the client speaks it.
        self.http2 = _DEFAULT_HTTP2
        self.session: H2Session | None = None
        self.parser = _parser(self)
        #: requests begun, and reads: the hygiene sweeper (hygiene.py) watches them.
        self.requests = 0
        self.reads = 0
        self.head_seen = 0
        self.head_since = 0.0
        self.seen = (-1, -1)
        self.since = 0.0
        self._queue: deque[tuple[Request, RequestBody, bool]] = deque()
        #: the body of the request being answered.
        self._serving = NO_BODY
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._in_headers = False
        self._core: dict[str, str] = {}
        self._hosts = 0
        self._current: RequestBody | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._eof = False
        self._wakeup: asyncio.Future[None] | None = None
        #: the last complete request asked for "Connection: close".
        self._closing_after = False
        #: a parse error to answer once the requests before it are answered.
        self._error: tuple[int, str] | None = None

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        if self.refused:
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        # Kept: each get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self.batch = write_batch(self._loop)
        peer = transport.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.info = ConnectionInfo(address, tls=ssl_object is not None, peer_certificate=cert)
        describe_local(self.info, transport, self.wants_local_address, self.wants_original_dst)
        if ssl_object is not None:
            self.scheme = "https"
            if ssl_object.selected_alpn_protocol() == "h2":
                self._start_h2(b"")

    def _start_h2(self, data: bytes) -> None:
        # Imported on the first HTTP/2 client: h2 and hpack add ~1 MiB to a sidecar
        # that may never see one.
        from sidemesh.datapath.h2_downstream import H2Session

        transport = self.transport
        assert transport is not None
        session = self.session = H2Session(self, self.http2)
        transport.set_protocol(session)
        session.connection_made(transport)
        if data:
            session.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.reads += 1
        if self.reads == 1 and data[:3] == _H2_START:
            self._start_h2(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # What follows an upgrade request (which had no body: see check_upgrade)
            # waits for its route and answer: a tunnel's bytes, or HTTP/1.1 (tunnel.py).
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            upgrade = self._queue[-1][0] if self._queue else None
            self.parser = UpgradeHold(_parser(self), upgrade, data[offset:])
            self._pause_reading()
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised, and sets it as the context.
            refused = exc.__context__
            if isinstance(refused, CodecError):
                self._fail_request(refused.status, refused.message)
            elif self._current is None and self._closing_after:
                # Bytes after a request with "Connection: close" are ignored, as RFC
                # 9112 9.6 allows: the connection ends after that request's response.
                self.transport.pause_reading()  # type: ignore[union-attr]
            else:
                self._fail_request(400, f"malformed request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._current is not None:
            self._current.abort()
        for _, body, _ in self._queue:
            body.abort()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._wake()
        self._on_close(self)

    def eof_received(self) -> bool | None:
        if self.closed:
            return None  # lingering (_linger): the client is done too
        # The client half-closed: answer what it sent, then close (returning True keeps
        # the write side open until then).
        self.keep_alive = False
        self._eof = True
        if self._current is not None:
            self._current.abort()
        if self.busy or self._queue:
            return True
        self._wake()
        # Returning None closes the transport: what is held for it goes first.
        self.batch.flush()
        return None

    # httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.requests += 1
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_headers = True
        self._core = {}
        self._hosts = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        check_target_length(len(self._url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_headers:
            return  # trailers: never used for framing, not forwarded
        self._header_bytes += len(name) + len(value) + 4
        check_field_limits(len(self._headers), self._header_bytes)
        key = field_name(name)
        if key is None:
            return
        text = value.decode("latin-1")
        self._headers.append((key, text))
        if key in CORE_FIELDS:
            if key == "host":
                self._hosts += 1
            self._core.setdefault(key, text)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        parser = self.parser
        version = parser.get_http_version()
        check_version(version)
        method = parser.get_method().decode("latin-1")
        headers = Headers._trusted(self._headers)
        core = self._core
        path, authority = request_target(method, self._url)
        host = request_host(version, core.get("host"), self._hosts, authority)
        if authority is not None:
            headers.set("host", authority)
            core["host"] = authority
        framing = request_framing(core.get("transfer-encoding"), core.get("content-length"))
        check_upgrade(core.get("upgrade"), framing)
        connection = core.get("connection")
        if connection is not None and connection not in PLAIN_CONNECTION:
            # Before routing, so routes and policies see the fields the upstream gets.
            drop_nominated_fields(headers, core)
        paths = self.paths
        if paths.normalize and path != "*":
            try:
                path = normalize_path(path, paths.merge_slashes, paths.escaped_slashes)
            except PathRejected as exc:
                raise CodecError(400, str(exc)) from None
        keep_alive = parser.should_keep_alive()
        most = self.limits.max_requests_per_connection
        if most is not None and self.requests >= most:
            keep_alive = False
        self._closing_after = not keep_alive
        body = (
            RequestBody(framing == BODY_CHUNKED, self._pause_reading, self._resume_reading)
            if framing != BODY_NONE
            else NO_BODY
        )
        request = Request(
            method, path, host.lower(), headers, self.info, self.listener, self.scheme, version
        )
        request._core = core
        self._current = body
        self._queue.append((request, body, keep_alive))
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.feed(body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.feed_eof()
            self._current = None

    # flow control ----------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # serving -----------------------------------------------------------------------
    async def _serve(self) -> None:
        # One task per connection, parked between requests: cheaper than a task per
        # request on a kept-alive connection.
        try:
            while not self.closed:
                if not self._queue:
                    if self._error is not None or self._eof:
                        break
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
                    self._wakeup = None
                    continue
                request, body, keep_alive = self._queue.popleft()
                self.keep_alive = keep_alive and not self._eof
                self.busy = True
                self.response_started = False
                self.response_done = False
                self._serving = body
                await self.handler(self, request, body)
                self._serving = NO_BODY
                self.busy = False
                self.bytes_sent = 0
                if self.response_done and not body.eof:
                    # The handler answered before the body was read (a 403, a 404):
                    # the rest of the body cannot be skipped safely.
                    self._linger()
                    break
                if not self.keep_alive or not self.response_done:
                    self.close()
                    break
        finally:
            self.busy = False
            self._task = None
            if self._error is not None:
                self._answer_error()
            elif self._eof:
                self.close()

    def start_response(
        self, status: int, headers: Headers | bytes, reason: str = "", chunked: bool = False
    ) -> None:
        if not self._serving.eof:
            # Answered before its body is in (a 404, a policy's 403): the rest cannot be
            # skipped safely, so the connection ends with this answer (_serve), and the
            # client must be told so, or it would send its next request on it.
            self.keep_alive = False
        super().start_response(status, headers, reason, chunked)

    # hygiene (hygiene.py) ------------------------------------------------------------
    def reading_head(self) -> bool:
        return self._in_headers

    def pending(self) -> bool:
        return bool(self._queue)

    def expire_head(self) -> None:
        timeout = self.limits.request_headers_timeout
        self._fail_request(408, f"request headers not received within {timeout:g}s")

    def _fail_request(self, status: int, message: str) -> None:
        if self._current is not None:
            # The request being parsed is bad: it never reaches the handler.
            self._current.abort()
            if self._queue and self._queue[-1][1] is self._current:
                self._queue.pop()
            self._current = None
        if self.transport is not None:
            self.transport.pause_reading()
        self._error = (status, message)
        if self._task is None:
            self._answer_error()
        else:
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _answer_error(self) -> None:
        if self._error is not None and not self.closed:
            status, message = self._error
            self.keep_alive = False
            if not self.response_started or self.response_done:
                self.write_simple(
                    Response.json(
                        status, {"error": REASONS.get(status, "error"), "message": message}
                    )
                )
            if self.on_rejected is not None:
                self.on_rejected(self, status, message)
        self.close()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        elif self.transport is not None and not self.transport.is_closing():
            self.batch.flush()  # the last answer may be held (writes.py)
            self.transport.close()
        self.closed = True

    def _linger(self) -> None:
        """Close after an answer that came before the request's body was in, as Envoy's
        delayed close: the answer goes out with a FIN, and what the client still sends is
        read and dropped for up to :data:`LINGER` seconds. Closing at once with its bytes
        unread would reset the connection, and a reset can destroy the answer before
        the client has read it."""
        transport = self.transport
        if self.session is not None or transport is None or transport.is_closing():
            self.close()
            return
        self.closed = True  # data_received drops what comes
        self.batch.flush()
        if transport.can_write_eof():  # not over TLS: there the answer tells the client
            transport.write_eof()
        transport.resume_reading()
        self._loop.call_later(LINGER, transport.close)

    def stop_serving(self) -> None:
        """Serve the requests begun, then close (a drain): HTTP/2 clients get a GOAWAY."""
        if self.session is not None:
            self.session.goaway()
        elif not self.busy:
            self.close()
        else:
            self.keep_alive = False
