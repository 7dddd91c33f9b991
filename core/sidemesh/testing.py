"""Test helpers for sidemesh and its plugins: a real sidecar and real upstreams, each on
its own event loop in a background thread, so plain synchronous tests (and httpx) can
talk to them over real sockets.

    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        httpx.get(sc.url("main") + "/hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar, cast

import httptools

from .config import build
from .plugins import PluginRegistry
from .sidecar import Sidecar

__all__ = [
    "BackgroundLoop",
    "ProxyProcess",
    "Reply",
    "RunningSidecar",
    "SeenRequest",
    "Upstream",
    "free_port",
    "raw_exchange",
    "running_sidecar",
    "simple_config",
    "wait_for",
]

T = TypeVar("T")


class BackgroundLoop:
    """An event loop in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        # The loop the proxy runs on in production: uvloop when installed.
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


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


class RunningSidecar:
    """A sidecar applied from a config dict, running on a background loop."""

    def __init__(self, sidecar: Sidecar, bg: BackgroundLoop) -> None:
        self.sidecar = sidecar
        self.bg = bg

    def port(self, listener: str) -> int:
        return self.sidecar.servers[listener].port

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.port(listener)}"

    def apply(self, doc: dict[str, Any], version: str = "test") -> None:
        """Apply another config (raises ``ConfigInvalid``/``ApplyError`` like a reload)."""
        config = build(doc, self.sidecar.registry)
        self.bg.run(self.sidecar.apply(config, version, "test"))


def simple_config(
    *upstreams: str,
    plugins: Sequence[dict[str, Any]] = (),
    listener_plugins: Sequence[dict[str, Any]] = (),
    timeout: str = "15s",
    load_balancer: str = "round_robin",
) -> dict[str, Any]:
    """One listener ``main`` on a free port, one route ``/`` to cluster ``backend``."""
    return {
        "node": {"service": "test"},
        "clusters": [
            {
                "name": "backend",
                "connect_timeout": "1s",
                "load_balancer": load_balancer,
                "endpoints": [{"address": a} for a in upstreams],
            }
        ],
        "listeners": [
            {
                "name": "main",
                "address": "127.0.0.1:0",
                "plugins": list(listener_plugins),
                "routes": [
                    {
                        "name": "all",
                        "match": {"prefix": "/"},
                        "cluster": "backend",
                        "timeout": timeout,
                        "plugins": list(plugins),
                    }
                ],
            }
        ],
    }


@contextlib.contextmanager
def running_sidecar(
    doc: dict[str, Any], extra_plugins: Sequence[object] = (), drain: float = 2.0
) -> Iterator[RunningSidecar]:
    """Validate ``doc``, apply it to a fresh sidecar and yield it; drained on exit.
    Installed plugins are found through entry points; ``extra_plugins`` adds more."""
    registry = PluginRegistry.load(extra_plugins=extra_plugins)
    config = build(doc, registry)
    bg = BackgroundLoop()
    sidecar = bg.run(_make_sidecar(registry))
    try:
        bg.run(sidecar.apply(config, "test", "test"))
        yield RunningSidecar(sidecar, bg)
    finally:
        with contextlib.suppress(Exception):
            bg.run(sidecar.drain(drain), timeout=drain + 5)
        bg.close()


async def _make_sidecar(registry: PluginRegistry) -> Sidecar:
    # The sidecar's asyncio primitives must be created on its own loop.
    return Sidecar(registry)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send exact bytes to 127.0.0.1:``port``, half-close, and return everything that
    comes back until the peer closes (or ``timeout`` passes without data)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for configs that must name one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """A ``sidemesh`` command in a subprocess, its output captured to a file; stopped
    (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.args = [sys.executable, "-m", "sidemesh", *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final = ""

    def __enter__(self) -> ProxyProcess:
        import tempfile

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
        )
        return self

    def wait_http(self, url: str, timeout: float = 20.0, status: int = 200) -> None:
        """Wait until ``url`` answers ``status``; fail with the process output if not."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(url, timeout=1).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{url} not {status} after {timeout}s:\n{self.output}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    @property
    def output(self) -> str:
        if self._log is None or self._log.closed:
            return self._final
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._final = self.output
        if self._log is not None:
            self._log.close()
