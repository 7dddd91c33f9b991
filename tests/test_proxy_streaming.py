"""Bodies stream both ways: 200 MB up and 200 MB down through a real `sidemesh proxy`
process whose peak memory stays flat (far below the bytes that passed through it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from sidemesh.testing import BackgroundLoop, ProxyProcess, free_port

SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST: count the body without keeping it. GET: stream SIZE bytes, chunked."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if head.startswith(b"POST"):
            if b"transfer-encoding: chunked" in head.lower():
                received = await _read_chunked(reader)
            else:
                received = 0
                while received < length:
                    received += len(await reader.read(CHUNK))
            body = str(received).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            block = b"x" * CHUNK
            for _ in range(SIZE // CHUNK):
                writer.write(b"%x\r\n%s\r\n" % (len(block), block))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        size = int((await reader.readline()).strip().split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return total
        remaining = size
        while remaining:
            remaining -= len(await reader.read(min(remaining, CHUNK)))
        total += size
        await reader.readline()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_200_mb_up_and_down_with_flat_memory(tmp_path: Path) -> None:
    bg = BackgroundLoop()
    try:
        server = bg.run(asyncio.start_server(_serve, "127.0.0.1", 0))
        upstream = server.sockets[0].getsockname()[1]
        listen, admin = free_port(), free_port()
        config = tmp_path / "sidemesh.yaml"
        config.write_text(yaml.safe_dump({
            "node": {"service": "big"},
            "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "up", "endpoints": [{"address": f"127.0.0.1:{upstream}"}]}],
            "listeners": [{"name": "in", "address": f"127.0.0.1:{listen}", "routes": [
                {"name": "all", "match": {"prefix": "/"}, "cluster": "up", "timeout": "0s"}]}],
        }))  # fmt: skip
        with ProxyProcess("proxy", "-c", str(config), "--access-log", "off") as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            assert proc.proc is not None
            baseline = _peak_rss_mib(proc.proc.pid)

            def upload() -> Iterator[bytes]:
                block = b"y" * CHUNK
                for _ in range(SIZE // CHUNK):
                    yield block

            timeout = httpx.Timeout(60.0)
            answer = httpx.post(f"http://127.0.0.1:{listen}/up", content=upload(), timeout=timeout)
            assert answer.status_code == 200
            assert int(answer.text) == SIZE

            received = 0
            with httpx.stream("GET", f"http://127.0.0.1:{listen}/down", timeout=timeout) as down:
                assert down.status_code == 200
                for part in down.iter_raw():
                    received += len(part)
            assert received == SIZE
            peak = _peak_rss_mib(proc.proc.pid)
        # 400 MB went through; the proxy's peak grew by a few buffers at most.
        assert peak - baseline < 40, (baseline, peak)
    finally:
        server.close()
        bg.close()
