"""The HTTP/2 connections to one endpoint (h2_upstream.py): streams share them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.exchange import UpstreamError, UpstreamExchange
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.h2_upstream import H2Upstream, H2UpstreamStream
from sidemesh.datapath.limits import ConnectionLimit
from sidemesh.datapath.pool import ConnectionPool

__all__ = ["H2Pool"]


class H2Pool(ConnectionPool):
    """The HTTP/2 connections to one endpoint: a request takes a stream on a connection
    with room (the upstream's SETTINGS_MAX_CONCURRENT_STREAMS), or opens a connection.

    The cluster's connection limit (circuit ``max_connections``) counts connections;
    requests, not connections, are what ``max_requests`` limits (as Envoy does)."""

    def __init__(
        self, host: str, port: int, setup: Callable[[], ConnectionSetup] | None, auto: bool
    ) -> None:
        super().__init__(host, port, setup)
        self.auto = auto
        self._connections: list[H2Upstream] = []
        #: ``protocol: auto`` where the endpoint chose HTTP/1.1: its connections.
        self.http1: ConnectionPool | None = None
        #: the connection being opened, if one is: requests meanwhile wait for it rather
        #: than each opening its own (``None`` as its result: it failed).
        self._connecting: asyncio.Future[H2Upstream | None] | None = None

    @property
    def size(self) -> int:
        return len(self._connections) + (self.http1.size if self.http1 is not None else 0)

    def take(self) -> UpstreamExchange | None:
        if self.http1 is not None:
            return self.http1.take()
        for connection in reversed(self._connections):
            if connection.usable():
                return H2UpstreamStream(connection)
        return None

    async def acquire(
        self, connect_timeout: float, fresh: bool = False, limit: ConnectionLimit | None = None
    ) -> UpstreamExchange:
        if self.http1 is not None:
            return await self.http1.acquire(connect_timeout, fresh, limit)
        if not fresh:
            if (stream := self.take()) is not None:
                return stream
            if self._connecting is not None:
                opened = await asyncio.shield(self._connecting)
                if self.http1 is not None:
                    return await self.http1.acquire(connect_timeout, fresh, limit)
                if opened is not None and opened.usable():
                    return H2UpstreamStream(opened)
        if limit is not None and not limit.reserve():
            raise UpstreamError(
                ResponseFlag.UPSTREAM_OVERFLOW, "upstream overflow: max_connections reached"
            )
        connecting = self._connecting = asyncio.get_running_loop().create_future()
        try:
            protocol = await self.open(connect_timeout, lambda: H2Upstream(self.drop, self.auto))
        except BaseException:
            if limit is not None:
                limit.release()
            self._opened(connecting, None)
            raise
        connection = cast(H2Upstream, protocol)
        if connection.http1:
            upstream = self._to_http1(connection, limit)
            self._opened(connecting, None)
            return upstream
        connection.limit = limit
        self._connections.append(connection)
        self._opened(connecting, connection)
        return H2UpstreamStream(connection)

    def _opened(
        self, connecting: asyncio.Future[H2Upstream | None], connection: H2Upstream | None
    ) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.done():
            connecting.set_result(connection)

    def _to_http1(self, connection: H2Upstream, limit: ConnectionLimit | None) -> UpstreamExchange:
        self.http1 = self.http1 or ConnectionPool(self.host, self.port, self._setup)
        assert connection.transport is not None
        upstream = self.http1.adopt(connection.transport)
        upstream.limit = limit
        return upstream

    def drop(self, connection: H2Upstream) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
        limit = connection.limit
        if limit is not None:
            connection.limit = None
            limit.release()

    def close(self) -> None:
        for connection in list(self._connections):
            connection.close()
        if self.http1 is not None:
            self.http1.close()
