"""The benchmark's CPU per request: every process of a proxy counts (its children too),
the load generator's own CPU is read, and the scaling table sets 1 and 2 workers side
by side with the ceiling that the load's CPU puts on their gain."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from sidemesh import testing

REPO = Path(__file__).resolve().parents[1]

# A parent that idles while its child burns CPU, as sidemesh's parent and its workers do.
_BUSY_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def bench_cpu(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("bench.cpu")


def test_the_cpu_of_a_proxys_children_counts(bench_cpu: ModuleType) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _BUSY_CHILD], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        meter = bench_cpu.CpuMeter([parent.pid])
        meter.start()
        time.sleep(1.0)
        used = meter.seconds()
        # One core busy for a second (less when the machine is shared), nothing for the
        # idle parent.
        assert 0.2 < used < 1.5
    finally:
        subprocess.run(["kill", str(child)], check=False, timeout=10)
        parent.kill()
        parent.wait(10)


def _row(name: str, rps: float, cpu_us: float, rss_mib: int,
         load_cpu_us: float | None = None) -> object:
    report = importlib.import_module("bench.report")
    load = importlib.import_module("bench.load")
    measurement = load.Measurement(rps=rps, p50_ms=1.0, p99_ms=2.0, requests=int(rps),
                                   bad_status=0, socket_errors=0)
    return report.Row(name, "ok", measurement=measurement, rss_kib=rss_mib * 1024,
                      cpu_us=cpu_us, load_cpu_us=load_cpu_us)


def test_the_scaling_table_pairs_one_and_two_workers(bench_cpu: ModuleType) -> None:
    rows = [_row("sidemesh", 10_000, 80.0, 60), _row("sidemesh-2w", 16_000, 82.5, 58),
            _row("nginx", 40_000, 18.0, 7)]
    format_scaling = bench_cpu.format_scaling
    table = format_scaling(rows)
    assert "| sidemesh | 10,000 | 16,000 | 1.60 | - | 80.0 | 82.5 | - | 60.0 / 58.0 |" in table
    assert "| nginx |" not in table  # nginx-2w did not run
    assert format_scaling(rows[2:]) == ""


def test_the_ceiling_of_two_workers_is_the_shared_cores_over_all_the_cpu_a_request_costs(
    bench_cpu: ModuleType,
) -> None:
    # Two cores, 20 µs of the workers' and 20 of the load's a request: at most 50,000
    # req/s, 1.25x the one worker's 40,000, however the workers are built.
    rows = [_row("sidemesh", 40_000, 20.0, 42), _row("sidemesh-2w", 46_000, 20.0, 41, 20.0)]
    table = bench_cpu.format_scaling(rows, shared_cores=2)
    assert "| sidemesh | 40,000 | 46,000 | 1.15 | 1.25 | 20.0 | 20.0 | 20.0 |" in table
    # Pinned, the processes do not share the cores: no ceiling is claimed.
    assert "| 1.15 | - |" in bench_cpu.format_scaling(rows, shared_cores=None)


def test_the_load_generators_own_cpu_is_measured(bench_cpu: ModuleType) -> None:
    load = importlib.import_module("bench.load")
    settings = load.LoadSettings(duration=1.0, warmup=0.0, connections=2, rate=500.0,
                                 cpu=None, wrk="wrk")
    with testing.Upstream() as upstream:
        result = load.measure(settings, f"http://{upstream.address}/")
    assert result.requests > 300
    # The fixed-rate client is a Python process that ran for a second: some of a core,
    # at most all of it (its start-up included).
    assert result.client_cpu_s is not None
    assert 0.02 < result.client_cpu_s < 2.0
