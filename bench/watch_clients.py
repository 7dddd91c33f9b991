"""The client processes of ``bench/control_watchers.py``: many sidecars' long polls.

Reads one JSON line on stdin (``host``, ``port``, ``ack`` and ``watchers``: a list of
``[service, token, proxy id, version seen]``), opens one keep-alive connection per
watcher and sends its watch, prints ``{"sent": n}``. Once every watcher has an answer,
or when a line arrives on stdin, it prints ``{"received": [[proxy id, time, version,
ACK time or null], ...], "errors": [...]}`` (``time.monotonic()``, the same clock in
every process of the machine), and exits at the next line or when stdin closes.

Raw HTTP/1.1 over asyncio streams on uvloop: much less client work per watcher than an
HTTP library, so the measurement is the server's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop

__all__ = ["main"]

#: Longer than any round: no watch may end in a 304 while it is measured.
WATCH_TIMEOUT = 300
#: Connections opened at once (the control plane's accept backlog is 2048).
CONNECT_AT_ONCE = 100


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


class _Watcher:
    """One sidecar: a watch, then (``ack``) its ACK report and its next watch, as the
    sidecar agent does."""

    def __init__(self, spec: dict[str, Any], service: str, token: str, proxy: str,
                 after: int) -> None:
        self.host, self.port, self.ack = spec["host"], spec["port"], spec["ack"]
        self.service, self.token, self.proxy, self.after = service, token, proxy, after
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.error: str | None = None
        self.received: float | None = None
        self.acked: float | None = None
        self.version: int | None = None

    def _request(self, method: str, path: str, body: bytes = b"") -> bytes:
        extra = (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 if method == "POST" else "")
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\n{extra}\r\n").encode() + body

    def _watch(self, after: int) -> bytes:
        return self._request("GET", f"/v1/services/{self.service}/watch?after={after}"
                                    f"&timeout={WATCH_TIMEOUT}&proxy={self.proxy}")

    async def connect(self, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(self._watch(self.after))
                await self.writer.drain()
            except OSError as exc:
                self.error = f"{self.proxy}: cannot connect: {exc}"

    async def receive(self) -> None:
        assert self.reader is not None and self.writer is not None
        try:
            status, body = await _read_response(self.reader)
            self.received = time.monotonic()
            if status != 200:
                self.error = f"{self.proxy}: watch answered {status} {body[:200]!r}"
                return
            self.version = int(json.loads(body)["version"])
            if not self.ack:
                return
            report = json.dumps({"service": self.service, "state": "ACK",
                                 "version": self.version, "plugins": []}).encode()
            self.writer.write(self._request("POST", f"/v1/proxies/{self.proxy}/status", report))
            status, body = await _read_response(self.reader)
            if status != 200:
                self.error = f"{self.proxy}: status report answered {status} {body[:200]!r}"
                return
            self.acked = time.monotonic()
            self.writer.write(self._watch(self.version))
            await self.writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, KeyError, IndexError) as exc:
            self.error = f"{self.proxy}: {type(exc).__name__}: {exc}"


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _worker() -> None:
    """Read the watchers' spec on stdin, park them, say so; report every arrival once all
    arrived or when a line comes on stdin."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    spec = json.loads(await stdin.readline())
    watchers = [_Watcher(spec, *w) for w in spec["watchers"]]
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    await asyncio.gather(*(w.connect(gate) for w in watchers))
    _emit({"sent": sum(w.error is None for w in watchers)})
    arrivals = asyncio.gather(*(w.receive() for w in watchers if w.error is None))
    stop = asyncio.ensure_future(stdin.readline())
    either: set[asyncio.Future[Any]] = {arrivals, stop}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    _emit({"received": [[w.proxy, w.received, w.version, w.acked] for w in watchers
                        if w.received is not None and w.error is None],
           "errors": [w.error for w in watchers if w.error is not None]})
    if not stop.done():
        await stop
    for w in watchers:
        if w.writer is not None:
            w.writer.close()


def main() -> int:
    uvloop.run(_worker())
    return 0


if __name__ == "__main__":
    sys.exit(main())
