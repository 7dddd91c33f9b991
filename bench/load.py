"""Load generators: wrk (closed loop, throughput) and fixed_rate.py (latency at a set rate)."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.procs import BenchError, cpu_prefix

__all__ = ["LoadSettings", "Measurement", "measure", "parse_wrk"]

FIXED_RATE_SCRIPT = Path(__file__).resolve().parent / "fixed_rate.py"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([0-9.]+)(us|ms|s|m|h)\s*$")


@dataclass(frozen=True)
class LoadSettings:
    duration: float
    warmup: float
    connections: int
    #: requests per second for the fixed-rate client; None means wrk at full speed.
    rate: float | None
    #: CPU for the load generator; None runs it unpinned.
    cpu: int | None
    wrk: str


@dataclass(frozen=True)
class Measurement:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    #: responses outside 2xx/3xx (wrk) or 2xx (fixed rate): a fast 502 is no success.
    bad_status: int
    socket_errors: int
    #: user + system CPU seconds of the load generator's own process over the run.
    client_cpu_s: float | None = None


def _to_ms(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise BenchError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Measurement:
    """Read req/s, the latency distribution and the error counts from ``wrk --latency``."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    if rps is None:
        raise BenchError(f"wrk printed no Requests/sec: {output.strip()[-300:]!r}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE))
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Measurement(
        rps=float(rps.group(1)),
        p50_ms=_to_ms(percentiles["50"]) if "50" in percentiles else None,
        p99_ms=_to_ms(percentiles["99"]) if "99" in percentiles else None,
        requests=int(total.group(1)) if total else 0,
        bad_status=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], timeout: float) -> tuple[str, float]:
    """The command's output and its CPU seconds: what the children reaped while it ran
    used, and during a measured run the harness reaps no other child (its proxies and
    the upstream run on until the scenario stops)."""
    before = _children_cpu()
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{Path(argv[0]).name} did not finish in {timeout:.0f}s") from exc
    except OSError as exc:
        raise BenchError(f"cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise BenchError(f"{Path(argv[0]).name} exited {result.returncode}: {lines[-1][:300]}")
    return result.stdout, _children_cpu() - before


def _wrk(settings: LoadSettings, url: str, seconds: float) -> tuple[str, float]:
    argv = [
        *cpu_prefix(settings.cpu), settings.wrk, "-t1", f"-c{settings.connections}",
        f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency", url,
    ]
    return _run(argv, timeout=seconds + 30)


def _fixed_rate(settings: LoadSettings, url: str, rate: float) -> Measurement:
    argv = [
        *cpu_prefix(settings.cpu), sys.executable, str(FIXED_RATE_SCRIPT), url,
        "--rate", str(rate), "--duration", str(settings.duration),
        "--warmup", str(settings.warmup), "--connections", str(settings.connections),
        "--json",
    ]
    output, cpu = _run(argv, timeout=settings.duration + settings.warmup + 60)
    try:
        data = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BenchError(f"fixed_rate.py printed no JSON: {output[-300:]!r}") from exc
    latency = data.get("latency_ms", {})
    return Measurement(
        rps=float(data["achieved_rate"]),
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
        requests=int(data["completed"]),
        bad_status=int(data["non_2xx"]),
        socket_errors=int(data["errors"]),
        client_cpu_s=cpu,
    )


def measure(
    settings: LoadSettings, url: str, started: Callable[[], None] = lambda: None
) -> Measurement:
    """Warm up (discarded), then measure ``url`` once with the configured generator;
    ``started`` is called as the measured part begins (the fixed-rate client warms up
    inside its own run: there, before the warm-up)."""
    if settings.rate is not None:
        started()
        return _fixed_rate(settings, url, settings.rate)
    if settings.warmup > 0:
        _wrk(settings, url, settings.warmup)
    started()
    output, cpu = _wrk(settings, url, settings.duration)
    return replace(parse_wrk(output), client_cpu_s=cpu)
