"""Listening sockets: plain, TLS, or both on one port (permissive mTLS)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.tls_bridge import tls_server

__all__ = ["ListenerServer"]

#: how long a permissive listener waits for a client's first byte before closing.
SNIFF_TIMEOUT = 10.0
TLS_HANDSHAKE_RECORD = 0x16


class ListenerServer:
    """One listening socket and the connections it accepted."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
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
        self._sock: socket.socket | None = None
        self._sniffers: set[asyncio.Task[None]] = set()

    @property
    def key(self) -> tuple[str, int, bool, bool]:
        return (self.host, self.port, self.setup.ssl_context is not None, self.setup.tls_optional)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = self.setup.ssl_context
        if ctx is not None and self.setup.tls_optional:
            sock = socket.create_server((self.host, self.port), backlog=1024,
                                          reuse_port=self.reuse_port)
            sock.setblocking(False)
            self._sock = sock
            self.port = sock.getsockname()[1]
            loop.add_reader(sock.fileno(), self._accept)
            return
        self._server = await loop.create_server(
            self._protocols(ctx), self.host, self.port, backlog=1024, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        # Any, not the stub's Server: uvloop's gives its sockets as a list where the stub
        # says tuple, and compiled code checks the stub's type.
        server: Any = self._server
        self.port = server.sockets[0].getsockname()[1]

    def _protocols(self, ctx: ssl.SSLContext | None) -> Callable[[], asyncio.BaseProtocol]:
        if ctx is None:
            return self.factory
        return tls_server(ctx, self.factory, on_failure=self.on_tls_failure)

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._sniff(conn))
            self._sniffers.add(task)
            task.add_done_callback(self._sniffers.discard)

    async def _sniff(self, conn: socket.socket) -> None:
        """Peek at the first byte: a TLS handshake record gets TLS, anything else is
        served as plain HTTP (the mtls policy then decides what plain clients may do)."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(conn.fileno(), wake)
        try:
            async with asyncio.timeout(SNIFF_TIMEOUT):
                await readable
            first = conn.recv(1, socket.MSG_PEEK)
        except (TimeoutError, OSError):
            conn.close()
            return
        finally:
            loop.remove_reader(conn.fileno())
        if not first:
            conn.close()
            return
        ctx = self.setup.ssl_context if first[0] == TLS_HANDSHAKE_RECORD else None
        try:
            await loop.connect_accepted_socket(self._protocols(ctx), conn)
        except (OSError, asyncio.CancelledError):
            conn.close()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._sniffers):
            task.cancel()
