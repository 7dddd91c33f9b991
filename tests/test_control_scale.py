"""One control plane holds a fleet's long polls: a thousand sidecars watch one service
and a single PUT reaches every one of them (issue 15).

How fast it reaches them, and the memory each watch costs, is the benchmark's business
(``bench/control_watchers.py``); this checks that no watcher is lost or answered
anything but the new version. Each watcher is a raw keep-alive connection in this
process, with its own proxy id, as a sidecar agent sends it.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sidemesh.testing.control import ControlServer

WATCHERS = 1000
#: Generous: the benchmark measures well under a second for this; a busy shared
#: machine must not make the test flaky.
DEADLINE = 30.0


def config(prefix: str) -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "inbound", "address": "127.0.0.1:0",
                       "routes": [{"name": "app", "match": {"prefix": prefix},
                                   "cluster": "app"}]}],
    }


@pytest.fixture
def open_files() -> Iterator[None]:
    """Room for both ends of every watch's connection (they are all in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * WATCHERS + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = next((int(line.partition(":")[2]) for line in head[1:]
                   if line.lower().startswith("content-length:")), 0)
    return int(head[0].split()[1]), await reader.readexactly(length)


async def _fleet(cp: ControlServer, token: str) -> dict[str, int | str]:
    """Park a watch per sidecar, PUT version 2 once parked; what each one was answered."""
    address = urlsplit(cp.url)
    assert address.hostname is not None and address.port is not None
    proxies = [f"web-{i:04d}" for i in range(WATCHERS)]
    gate = asyncio.Semaphore(100)

    async def watch(proxy: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            reader, writer = await asyncio.open_connection(address.hostname, address.port)
            writer.write(f"GET /v1/services/web/watch?after=1&timeout=60&proxy={proxy} "
                         f"HTTP/1.1\r\nHost: {address.netloc}\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n".encode())
            await writer.drain()
            return reader, writer

    async def outcome(reader: asyncio.StreamReader) -> int | str:
        try:
            status, body = await _answer(reader)
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"connection lost: {exc!r}"
        return json.loads(body)["version"] if status == 200 else f"{status} {body[:200]!r}"

    async with asyncio.timeout(2 * DEADLINE), httpx.AsyncClient(
            base_url=cp.url, headers=cp.admin, timeout=DEADLINE) as admin:
        connections = await asyncio.gather(*(watch(p) for p in proxies))
        try:
            # A watch registers its proxy id, then parks: all listed, all waiting.
            while True:
                listed = (await admin.get("/v1/proxies")).json()["proxies"]
                if set(proxies) <= {p["id"] for p in listed}:
                    break
                await asyncio.sleep(0.1)
            put = await admin.put("/v1/services/web/config", json=config("/v2"))
            assert put.json()["version"] == 2
            waits = [asyncio.create_task(outcome(r)) for r, _ in connections]
            await asyncio.wait(waits, timeout=DEADLINE)
            answers = [w.result() if w.done() else f"nothing within {DEADLINE:.0f} s"
                       for w in waits]
            for w in waits:
                w.cancel()
        finally:
            for _, writer in connections:
                writer.close()
    return dict(zip(proxies, answers, strict=True))


def test_one_put_reaches_a_thousand_watching_sidecars(tmp_path: Path, open_files: None
                                                      ) -> None:
    with ControlServer(tmp_path / "data") as cp:
        first = httpx.put(f"{cp.url}/v1/services/web/config", json=config("/v1"),
                          headers=cp.admin, timeout=10)
        assert first.json()["version"] == 1
        answers = asyncio.run(_fleet(cp, cp.token("web")))
        listed = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=10).json()

    assert answers == {f"web-{i:04d}": 2 for i in range(WATCHERS)}
    assert sum(p["service"] == "web" for p in listed["proxies"]) == WATCHERS
