"""Listening sockets: plain, TLS, or both on one port (permissive mTLS)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.downstream import DownstreamConnection
from sidemesh.datapath.tls_bridge import HANDSHAKE_TIMEOUT, TlsBridge

__all__ = ["ListenerServer"]

#: how long a permissive listener waits for a client's first byte before closing.
SNIFF_TIMEOUT = 10.0
TLS_HANDSHAKE_RECORD = 0x16


class ListenerServer:
    """One listening socket and the connections it accepted.

    Every connection's protocol comes from ``factory`` as the connection is accepted,
    whatever the listener speaks: it counts against the listener's connection limit
    from then on, and hears ``connection_lost`` (without ``connection_made``) if the
    connection ends before its TLS handshake or its first byte.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        factory: Callable[[], DownstreamConnection],
        setup: ConnectionSetup,
        reuse_port: bool = False,
        on_tls_failure: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.factory = factory
        self.setup = setup
        #: SO_REUSEPORT, so the workers of ``--concurrency N`` each bind the port and the
        #: kernel spreads connections over them.
        self.reuse_port = reuse_port
        #: told why a client's TLS handshake did not succeed.
        self.on_tls_failure = on_tls_failure
        self._server: asyncio.AbstractServer | None = None
        self._sniffing: set[_Sniffer] = set()

    @property
    def key(self) -> tuple[str, int, bool, bool]:
        return (self.host, self.port, self.setup.ssl_context is not None, self.setup.tls_optional)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, self.host, self.port, backlog=1024, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        # Any, not the stub's Server: uvloop's gives its sockets as a list where the stub
        # says tuple, and compiled code checks the stub's type.
        server: Any = self._server
        self.port = server.sockets[0].getsockname()[1]

    def _protocol(self) -> asyncio.BaseProtocol:
        app = self.factory()
        # A connection over the listener's limit is closed by its own protocol as it is
        # made, as Envoy closes an overflow at accept: no TLS handshake, no first byte.
        if self.setup.ssl_context is None or app.refused:
            return app
        if self.setup.tls_optional:
            return _Sniffer(self, app)
        return self.tls(app)

    def tls(self, app: asyncio.BaseProtocol) -> TlsBridge:
        """``app``'s connection, spoken in TLS with the listener's context."""
        assert self.setup.ssl_context is not None
        return TlsBridge(self.setup.ssl_context, app, server_side=True,
                         handshake_timeout=HANDSHAKE_TIMEOUT, on_failure=self.on_tls_failure)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        for sniffer in list(self._sniffing):
            sniffer.abort()


class _Sniffer(asyncio.Protocol):
    """A permissive listener's connection until its first bytes arrive: a TLS handshake
    record gets TLS, anything else is served as plain HTTP (the mtls policy then decides
    what plain clients may do)."""

    def __init__(self, listener: ListenerServer, app: asyncio.Protocol) -> None:
        self.listener = listener
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.listener._sniffing.add(self)
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, self.abort)

    def data_received(self, data: bytes) -> None:
        if data[0] == TLS_HANDSHAKE_RECORD:
            self._hand_over(self.listener.tls(self.app), data)
        else:
            self._hand_over(self.app, data)

    def eof_received(self) -> bool | None:
        return None  # gone before a byte: the transport closes, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        self.app.connection_lost(exc)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _hand_over(self, protocol: asyncio.Protocol, data: bytes) -> None:
        self._done()
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not transport.is_closing():
            protocol.data_received(data)

    def _done(self) -> None:
        self.listener._sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
