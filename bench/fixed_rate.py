"""Fixed-rate latency: requests at a steady rate, latency measured from the intended send time.

wrk drives a closed loop (a new request only when one finishes), so a slow proxy also
slows the load and hides its stalls; Debian has no wrk2. This small client sends
``--rate`` requests per second over a pool of keep-alive connections and measures each
latency from when the request *should* have been sent, so waiting for a free
connection counts too (wrk2's correction for coordinated omission).

    python bench/fixed_rate.py http://127.0.0.1:15001/ --rate 1000 --duration 10

It prints p50/p90/p99/p99.9/max; ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["FixedRateResult", "main", "run_fixed_rate"]

SUMMARY = "Fixed-rate latency: p50/p99 at a steady request rate (coordinated-omission aware)."


@dataclass
class FixedRateResult:
    target_rate: float
    duration: float
    sent: int = 0
    completed: int = 0
    non_2xx: int = 0
    errors: int = 0
    achieved_rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection closed by peer"))

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def request(self, raw: bytes) -> int:
        if self.transport is None or self.closed:
            raise ConnectionResetError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def _worker(
    host: str,
    port: int,
    raw: bytes,
    queue: asyncio.Queue[float | None],
    result: FixedRateResult,
    latencies: list[float],
    request_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    conn: _Connection | None = None
    try:
        while (scheduled := await queue.get()) is not None:
            try:
                if conn is None or conn.closed:
                    if conn is not None:
                        conn.close()
                    _, fresh = await asyncio.wait_for(
                        loop.create_connection(_Connection, host, port), request_timeout
                    )
                    conn = fresh
                status = await asyncio.wait_for(conn.request(raw), request_timeout)
            except (OSError, TimeoutError, httptools.HttpParserError):
                result.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            latencies.append(time.perf_counter() - scheduled)
            result.completed += 1
            if not 200 <= status < 300:
                result.non_2xx += 1
    finally:
        if conn is not None:
            conn.close()


def _percentile(ordered: list[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def run_fixed_rate(
    url: str,
    rate: float,
    duration: float,
    connections: int = 16,
    request_timeout: float = 5.0,
) -> FixedRateResult:
    """Send ``rate * duration`` GETs to ``url`` on a fixed schedule and measure them."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port/path URLs are supported, not {url!r}")
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "User-Agent: sidemesh-bench-fixed-rate\r\n\r\n"
    ).encode()
    # Not loop.time(): uvloop's clock ticks in whole milliseconds.
    result = FixedRateResult(target_rate=rate, duration=duration)
    latencies: list[float] = []
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    workers = [
        asyncio.create_task(_worker(host, port, raw, queue, result, latencies, request_timeout))
        for _ in range(connections)
    ]
    interval = 1.0 / rate
    total = int(rate * duration)
    start = time.perf_counter() + 0.01
    try:
        while result.sent < total:
            now = time.perf_counter()
            # Catch up in one go after a late wake-up: the schedule, not the loop, decides.
            while result.sent < total and start + result.sent * interval <= now:
                queue.put_nowait(start + result.sent * interval)
                result.sent += 1
            await asyncio.sleep(max(0.0, start + result.sent * interval - time.perf_counter()))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.wait_for(asyncio.gather(*workers), duration + request_timeout * 2 + 5)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - start
    result.achieved_rate = result.completed / elapsed if elapsed > 0 else 0.0
    if latencies:
        ordered = sorted(latencies)
        result.latency_ms = {
            name: round(_percentile(ordered, q) * 1000, 3)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
        }
        result.latency_ms["max"] = round(ordered[-1] * 1000, 3)
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=SUMMARY)
    parser.add_argument("url", help="http://host:port/path to GET")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent, not measured")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout (s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1 or args.warmup < 0:
        parser.error("--rate, --duration and --connections must be positive")
    return args


async def _measure(args: argparse.Namespace) -> FixedRateResult:
    if args.warmup > 0:
        await run_fixed_rate(args.url, args.rate, args.warmup, args.connections, args.timeout)
    return await run_fixed_rate(
        args.url, args.rate, args.duration, args.connections, args.timeout
    )


def _run(args: argparse.Namespace) -> FixedRateResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_measure(args))
    # The client's own loop overhead lands in every latency figure: keep it small.
    measured: FixedRateResult = uvloop.run(_measure(args))
    return measured


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        result = _run(args)
    except (ValueError, OSError, TimeoutError) as exc:
        print(f"fixed_rate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(f"target {result.target_rate:.0f} req/s for {result.duration:.0f}s: "
          f"sent {result.sent}, completed {result.completed}, achieved "
          f"{result.achieved_rate:.0f} req/s, non-2xx {result.non_2xx}, errors {result.errors}")
    print("  " + "  ".join(f"{k} {v:.2f} ms" for k, v in result.latency_ms.items()))
    if result.achieved_rate < 0.95 * result.target_rate:
        print("  warning: the target rate was not reached (client or server saturated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
