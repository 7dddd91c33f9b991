"""A real, scriptable HTTP/1.1 upstream server for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import httptools

from sidemesh.testing.loop import BackgroundLoop

__all__ = ["Reply", "SeenRequest", "Upstream"]


@dataclass
class Reply:
    """What a test upstream answers. ``reset`` closes the socket without answering;
    ``delay`` waits first; ``chunks`` sends a chunked body piece by piece."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    chunks: Sequence[bytes] | None = None
    close: bool = False


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw: bytes


Handler = Callable[[SeenRequest], "Reply | Awaitable[Reply]"]


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.raw = b""
        self.queue: asyncio.Queue[SeenRequest] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.upstream.connections += 1
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.raw += data
        self.upstream.raw.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        seen = SeenRequest(
            self.parser.get_method().decode(),
            self._url.decode(),
            self._headers,
            self._body,
            self.raw,
        )
        self.raw = b""
        self.upstream.requests.append(seen)
        self.queue.put_nowait(seen)

    async def _serve(self) -> None:
        while True:
            seen = await self.queue.get()
            reply = self.upstream.handler(seen)
            if not isinstance(reply, Reply):
                reply = await reply
            if reply.delay:
                await asyncio.sleep(reply.delay)
            assert self.transport is not None
            if reply.reset:
                self.transport.abort()
                return
            headers = dict(reply.headers)
            if reply.chunks is None:
                headers.setdefault("content-length", str(len(reply.body)))
            else:
                headers["transfer-encoding"] = "chunked"
            if reply.close:
                headers["connection"] = "close"
            head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            self.transport.write(head.encode() + b"\r\n")
            if seen.method == "HEAD":
                pass
            elif reply.chunks is None:
                self.transport.write(reply.body)
            else:
                for chunk in reply.chunks:
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await asyncio.sleep(0)
                self.transport.write(b"0\r\n\r\n")
            if reply.close:
                self.transport.close()
                return


class Upstream:
    """A real HTTP/1.1 server on 127.0.0.1 that records what it receives (parsed and raw
    bytes) and answers what ``handler`` says (default: 200 "ok")."""

    def __init__(self, handler: Handler | None = None, name: str = "upstream") -> None:
        self.handler: Handler = handler or (lambda _: Reply())
        self.name = name
        self.requests: list[SeenRequest] = []
        self.raw: list[bytes] = []
        self.connections = 0
        self._bg: BackgroundLoop | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Upstream:
        self._bg = BackgroundLoop()

        async def start() -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", 0)

        self._server = self._bg.run(start())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._bg is not None and self._server is not None
        server = self._server

        async def stop() -> None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

        with contextlib.suppress(Exception):
            self._bg.run(stop(), timeout=5)
        self._bg.close()
