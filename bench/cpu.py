"""CPU per request of a proxy (all its processes: nginx's master and workers, sidemesh's
parent and ``--concurrency`` workers), and the workers' scaling table, with the
ceiling that the load generator's and the upstream's CPU put on two workers' gain.

The CPU figure is the proxy's own cost, whatever the load generator and the upstream
did with the rest of the machine: user + system time from ``/proc/<pid>/stat`` of every
process of the proxy, before and after the measured run, over the requests served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bench.procs import descendants
from bench.report import Row

__all__ = ["SCALING", "CpuMeter", "format_scaling"]

_TICKS = os.sysconf("SC_CLK_TCK")

#: (target, its one-worker scenario, its two-worker scenario) in the scaling table.
SCALING: tuple[tuple[str, str, str], ...] = (
    ("sidemesh", "sidemesh", "sidemesh-2w"),
    ("nginx", "nginx", "nginx-2w"),
)


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may hold spaces: count fields after its ')'.
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CpuMeter:
    """CPU seconds the processes under ``roots`` (and their children) spend between
    :meth:`start` and :meth:`seconds`."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self._before: dict[int, int] = {}

    def _sample(self) -> dict[int, int]:
        return {pid: _cpu_ticks(pid) for root in self.roots for pid in descendants(root)}

    def start(self) -> None:
        self._before = self._sample()

    def seconds(self) -> float:
        after = self._sample()
        # A process started during the run (a restarted worker) counts from zero.
        ticks = sum(t - self._before.get(pid, 0) for pid, t in after.items())
        return ticks / _TICKS


def _per_worker_mib(row: Row) -> str:
    return "-" if row.rss_kib is None else f"{row.rss_kib / 1024:.1f}"


def _ceiling(one: Row, two: Row, shared_cores: int | None) -> str:
    """The most ``2 / 1`` can be when the two workers, the load generator and the
    upstream share ``shared_cores`` cores: those cores' microseconds a second over what a
    request costs all of them (the workers' p and the load's L), against one worker's
    req/s. Flat p leaves the gain bounded by L, whatever the proxy does."""
    if (shared_cores is None or one.measurement is None or not one.measurement.rps
            or two.cpu_us is None or two.load_cpu_us is None):
        return "-"
    most = shared_cores * 1e6 / (two.cpu_us + two.load_cpu_us)
    return f"{most / one.measurement.rps:.2f}"


def format_scaling(rows: list[Row], shared_cores: int | None = None) -> str:
    """1 and 2 workers of each target side by side; empty when no pair ran.

    ``shared_cores``: how many cores the proxy, the load generator and the upstream all
    share (an unpinned run), for the ceiling of the two workers' gain; None when pinned.
    """
    measured = {row.scenario: row for row in rows if row.measurement is not None}
    lines = ["| target | req/s, 1 worker | req/s, 2 workers | 2 / 1 | 2 / 1 at most | "
             "cpu µs/req, 1 | cpu µs/req, 2 | load cpu µs/req, 2 | "
             "peak RSS per worker (MiB), 1 / 2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for target, one_name, two_name in SCALING:
        one, two = measured.get(one_name), measured.get(two_name)
        if one is None or two is None or one.measurement is None or two.measurement is None:
            continue
        ratio = two.measurement.rps / one.measurement.rps if one.measurement.rps else 0.0
        lines.append(
            f"| {target} | {one.measurement.rps:,.0f} | {two.measurement.rps:,.0f} | "
            f"{ratio:.2f} | {_ceiling(one, two, shared_cores)} | {_us(one.cpu_us)} | "
            f"{_us(two.cpu_us)} | {_us(two.load_cpu_us)} | "
            f"{_per_worker_mib(one)} / {_per_worker_mib(two)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
