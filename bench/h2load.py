"""h2load (nghttp2-client): many HTTP/2 streams over few connections, and what it prints.

h2load prints req/s and a min/max/mean/sd line but no percentiles, so every run also
writes ``--log-file`` (one line per request: start µs, status, µs to the end of the
response) and p50/p99 come from that. A tiny h2c client checks, before a target is
measured, that it answers ``200`` with the upstream's body over HTTP/2.
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from bench.load import Measurement
from bench.procs import BenchError, cpu_prefix

__all__ = ["H2Load", "h2_get", "h2load_argv", "parse_h2load", "percentiles_ms", "run_h2load"]


@dataclass(frozen=True)
class H2Load:
    """One h2load shape: ``clients`` connections with up to ``streams`` requests each."""

    clients: int
    streams: int

    @property
    def label(self) -> str:
        return f"h2load -c {self.clients} -m {self.streams}"


def h2load_argv(
    h2load: str, load: H2Load, url: str, seconds: float, log_file: Path | None, cpu: int | None
) -> list[str]:
    """One timing-based run (``-D``) of one thread; warm-ups are separate runs so the
    proxy's CPU time can be read around the measured one alone."""
    argv = [*cpu_prefix(cpu), h2load, "-t", "1", "-c", str(load.clients),
            "-m", str(load.streams), "-D", str(max(1, round(seconds)))]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    return [*argv, url]


def percentiles_ms(log_text: str) -> tuple[float | None, float | None]:
    """p50 and p99 (nearest rank) of the completed requests of an h2load ``--log-file``;
    failed streams (status ``-1``) have no latency worth counting."""
    latencies = sorted(
        int(fields[2]) for fields in (line.split("\t") for line in log_text.splitlines())
        if len(fields) >= 3 and fields[1] != "-1"
    )
    if not latencies:
        return None, None

    def rank(fraction: float) -> float:
        index = max(0, math.ceil(len(latencies) * fraction) - 1)
        return latencies[index] / 1000.0

    return rank(0.50), rank(0.99)


def parse_h2load(output: str, log_text: str) -> Measurement:
    """req/s, counts and errors from h2load's summary; percentiles from its log file.

    h2load counts a non-2xx/3xx answer as ``failed`` too, and a reset or broken stream
    as ``failed`` and ``errored``: ``bad_status`` is the 4xx/5xx answers,
    ``socket_errors`` the failed requests that got no answer, plus timeouts.
    """
    rps = re.search(r"^finished in [0-9.]+\w*, ([0-9.]+) req/s", output, re.MULTILINE)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout", output, re.MULTILINE)
    statuses = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
                         output, re.MULTILINE)
    if rps is None or counts is None or statuses is None:
        raise BenchError(f"h2load printed no summary: {output.strip()[-300:]!r}")
    succeeded, failed, timeouts = (int(counts.group(i)) for i in (4, 5, 7))
    bad = int(statuses.group(3)) + int(statuses.group(4))
    p50, p99 = percentiles_ms(log_text)
    return Measurement(
        rps=float(rps.group(1)), p50_ms=p50, p99_ms=p99, requests=succeeded,
        bad_status=bad, socket_errors=max(0, failed - bad) + timeouts,
    )


def run_h2load(argv: list[str], seconds: float) -> str:
    """Run h2load; its stdout, or a BenchError with the reason it gave."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load did not finish in {seconds + 30:.0f}s") from exc
    except OSError as exc:
        raise BenchError(f"cannot run h2load: {exc}") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise BenchError(f"h2load exited {result.returncode}: {lines[-1][:300]}")
    return result.stdout


def h2_get(host: str, port: int, timeout: float = 5.0) -> tuple[int, str]:
    """``GET /`` over h2c with prior knowledge: the status and the body."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                          (":authority", f"{host}:{port}")], end_stream=True)
    status, body = 0, b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                raise BenchError(f"h2c {host}:{port} closed the connection before answering")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers).get(b":status", b"0"))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamReset):
                    raise BenchError(f"h2c {host}:{port} reset the stream "
                                     f"(error code {event.error_code})")
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body.decode(errors="replace")
            sock.sendall(conn.data_to_send())
