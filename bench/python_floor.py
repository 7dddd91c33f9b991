"""The floor of a Python proxy on this machine: raw asyncio protocols, httptools parsing
and pooled keep-alive upstream connections, nothing else (no routing, no header
rewriting, no timeouts, no metrics). DESIGN.md's "raw asyncio Protocol + httptools"
row. The harness runs it as the ``python-floor`` scenario so sidemesh's cost can be
read against what the language and event loop allow, in the same run.

Usage: python bench/python_floor.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import httptools
import uvloop

__all__ = ["main"]


class _Upstream(asyncio.Protocol):
    def __init__(self, idle: list[_Upstream]) -> None:
        self.idle = idle
        self.parser = httptools.HttpResponseParser(self)
        self.client: _Client | None = None
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None and not client.transport.is_closing():
            client.transport.write(b"".join(self.chunks))
        self.chunks = []
        self.idle.append(self)


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, idle: list[_Upstream]) -> None:
        self.upstream_port = upstream_port
        self.idle = idle
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        request, self.chunks = b"".join(self.chunks), []
        if self.idle:
            self._send(self.idle.pop(), request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(
            lambda: _Upstream(self.idle), "127.0.0.1", self.upstream_port
        )
        self._send(upstream, request)

    def _send(self, upstream: _Upstream, request: bytes) -> None:
        upstream.client = self
        upstream.transport.write(request)


async def _serve(listen_port: int, upstream_port: int) -> None:
    idle: list[_Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Client(upstream_port, idle), "127.0.0.1", listen_port
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    uvloop.run(_serve(listen_port, upstream_port))


if __name__ == "__main__":
    main()
