"""TLS spoken over a plain transport through ``ssl.MemoryBIO``: to upstreams, and on
listeners.

uvloop's SSL transport made up a third of the CPU of a request to a TLS upstream
(bench/README.md, the all-plugins row): per record it goes through its buffered-protocol
machinery, ``ssl.SSLObject``'s Python methods, and reads until ``SSLWantReadError`` is
raised. This bridge calls the C ``_SSLSocket`` directly and reads only while the
incoming BIO or OpenSSL hold bytes: 100.8 -> 89.6 µs of CPU per request through the
all-plugins route (medians of seven A/B pairs). The handshake, certificate checks, SNI
callbacks, record protection, KeyUpdate and session tickets stay OpenSSL's; this module
moves bytes between the socket and the two BIOs, and gives the connection's protocol a
transport once the handshake is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["HANDSHAKE_TIMEOUT", "TlsBridge", "handshake_failure", "open_tls"]

#: plaintext asked of OpenSSL per read; a record holds at most 16 KiB.
READ_SIZE = 64 * 1024
#: how long a client has to finish its handshake with a listener (uvloop's default,
#: which listeners had before they used this bridge).
HANDSHAKE_TIMEOUT = 60.0
P = TypeVar("P", bound=asyncio.BaseProtocol)
_CLOSED_IN_HANDSHAKE = "the peer closed the connection during the TLS handshake"


class TlsBridge(asyncio.Protocol):
    """The protocol of a TCP connection that speaks TLS, as a client or a server, and
    the transport of the protocol above it (which sees plaintext), once the handshake
    is done.

    A client reports the handshake's end on ``ready``. A server's protocol is made as
    the connection is accepted (it counts against the listener's connection limit, as
    Envoy's do), so it hears ``connection_lost`` when the handshake fails, times out or
    the client leaves during it, without having heard ``connection_made``; and
    ``on_failure`` hears why.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        app: asyncio.BaseProtocol,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ready: asyncio.Future[None] | None = None,
        handshake_timeout: float | None = None,
        on_failure: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname or None,
        )
        # The C object under SSLObject: its methods without a Python frame each.
        self._ssl: Any = self._object._sslobj  # type: ignore[attr-defined]
        self._app = cast(asyncio.Protocol, app)
        self._server_side = server_side
        self._ready = ready
        self._handshake_timeout = handshake_timeout
        self._on_failure = on_failure
        self._timer: asyncio.TimerHandle | None = None
        self._tcp: asyncio.Transport | None = None
        self._handshaking = True
        self._closing = False
        #: what ended the connection, when TLS did (a bad record, an alert).
        self._error: Exception | None = None

    # the TCP connection -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = cast(asyncio.Transport, transport)
        if self._handshake_timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self._handshake_timeout, self._handshake_timed_out)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._handshaking:
            self._handshake()
        else:
            self._read()

    def eof_received(self) -> bool | None:
        # The peer closed TCP (a close_notify, if any, came before as data).
        if self._handshaking:
            self._fail_handshake(ConnectionResetError(_CLOSED_IN_HANDSHAKE))
        elif not self._closing:  # not told twice after a close_notify
            self._app.eof_received()
        return None  # the transport closes, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._handshaking:
            self._fail_handshake(exc or ConnectionResetError(_CLOSED_IN_HANDSHAKE))
            if not self._server_side:
                return  # open_tls raises; its caller never had the protocol
            if self._on_failure is not None:
                self._on_failure(self._error or exc)
        self._app.connection_lost(exc or self._error)

    def pause_writing(self) -> None:
        if not self._handshaking:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if not self._handshaking:
            self._app.resume_writing()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert telling the peer why
            self._error = exc
            self._fail_handshake(exc)
            return
        self._flush()
        self._handshaking = False
        self._stop_timer()
        self._app.connection_made(self)  # type: ignore[arg-type]
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if self._incoming.pending:  # what came with the peer's last handshake flight
            self._read()

    def _fail_handshake(self, exc: BaseException) -> None:
        self._stop_timer()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
        if self._tcp is not None:
            self._tcp.close()

    def _handshake_timed_out(self) -> None:
        # Only armed while the handshake runs: its end, either way, cancels it.
        self._timer = None
        self._error = TimeoutError("the TLS handshake timed out")
        self._fail_handshake(self._error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read(self) -> None:
        chunks: list[bytes] = []
        ended = False
        incoming, sslobj = self._incoming, self._ssl
        try:
            # Only while bytes wait: reading until SSLWantReadError costs an exception.
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(READ_SIZE)
                if not chunk:
                    ended = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass  # a record not whole yet
        except ssl.SSLZeroReturnError:
            ended = True  # the peer's close_notify
        except ssl.SSLError as exc:
            # A record that fails its check, an alert: nothing more can be trusted.
            self._fail(exc)
            return
        self._flush()  # a KeyUpdate's answer, an alert
        if chunks:
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if ended and not self._closing:
            self._app.eof_received()
            self.close()

    def _fail(self, exc: ssl.SSLError) -> None:
        self._error = exc
        self.abort()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._tcp is not None and not self._tcp.is_closing():
            self._tcp.write(data)

    # the transport of the protocol above ------------------------------------------
    def write(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:  # the session broke: the writer learns it as a loss
            self._fail(exc)
            return
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        # Writes our close_notify; the peer's is not awaited (as Envoy does not).
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._ssl.shutdown()
        self._flush()
        if self._tcp is not None:
            self._tcp.close()

    def abort(self) -> None:
        self._closing = True
        if self._tcp is not None:
            self._tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._tcp is None or self._tcp.is_closing()

    def can_write_eof(self) -> bool:
        return False  # TLS 1.3 has no half-close (RFC 8446 6.1)

    def pause_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = cast(asyncio.Protocol, protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._object
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)


async def open_tls(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    host: str,
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None,
) -> tuple[asyncio.Transport, P]:
    """A TLS connection to ``host:port`` whose protocol ``factory`` makes, once the
    handshake succeeded (``ssl.SSLError`` or ``OSError`` when it did not): its transport
    (a :class:`TlsBridge`) and that protocol."""
    ready: asyncio.Future[None] = loop.create_future()
    app = factory()
    bridge = TlsBridge(context, app, server_hostname=server_hostname, ready=ready)
    try:
        await loop.create_connection(lambda: bridge, host, port)
        await ready
    except BaseException:
        bridge.abort()  # a timeout or a cancellation mid-handshake leaves no socket
        raise
    return cast(asyncio.Transport, bridge), app


def handshake_failure(exc: BaseException | None) -> str:
    """How a listener counts a handshake that did not succeed, as Envoy's listener ``ssl``
    statistics split them: ``no_certificate`` (``fail_verify_no_cert``),
    ``verify_failed`` (``fail_verify_error``: untrusted, expired, malformed), ``timeout``,
    ``closed`` (the client left: a TCP probe, a cut-off hello) or ``error`` (any other
    TLS failure: no shared version or cipher, not TLS at all)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "verify_failed"
    if isinstance(exc, ssl.SSLError):
        return "no_certificate" if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE" else "error"
    return "closed"
