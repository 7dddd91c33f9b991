"""One row per scenario: printed as a table, written as JSON under ``bench/results/``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.load import Measurement

__all__ = ["COMPARISONS", "Delta", "Row", "add_ratios", "deltas", "format_deltas",
           "format_table", "write_json"]

#: (what the difference measures, scenario, its baseline): reported when both ran.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("sidemesh over the bare Python relay", "sidemesh", "python-floor"),
    ("the retry and circuit plugins", "sidemesh-plugins", "sidemesh"),
    ("the safety checks (path normalization, timeouts)", "sidemesh", "sidemesh-unchecked"),
    ("two sidecar hops", "chain-plain", "direct"),
    ("mTLS between the two sidecars", "chain-mtls", "chain-plain"),
    ("two sidecar hops with mTLS", "chain-mtls", "direct"),
    ("two nginx hops", "chain-nginx", "direct"),
    ("two bare Python relay hops", "chain-floor", "direct"),
    ("two sidecar hops over two nginx hops", "chain-plain", "chain-nginx"),
    ("two mTLS sidecar hops over two nginx hops", "chain-mtls", "chain-nginx"),
    ("tracing, no collector", "sidemesh-tracing", "sidemesh"),
    ("a dead Zipkin collector", "sidemesh-tracing-dead-collector", "sidemesh-tracing"),
)


@dataclass
class Row:
    scenario: str
    #: "ok", "failed: <reason>" or "skipped: <reason>"
    status: str
    measurement: Measurement | None = None
    #: peak RSS (VmHWM) of the proxy process, the largest one if there are several.
    rss_kib: int | None = None
    vs_nginx: float | None = None
    vs_direct: float | None = None
    #: how the load was generated: "wrk, full speed" or "fixed rate N req/s".
    mode: str = ""
    #: CPU time of all the proxy's processes per request served, in microseconds.
    cpu_us: float | None = None
    #: the same of the load generator and the upstream nginx together.
    load_cpu_us: float | None = None
    #: which round of ``--rounds`` measured it (1 for a single run).
    round: int = 1

    def summary(self) -> str:
        m = self.measurement
        if m is None:
            return self.status
        return (f"{m.rps:,.0f} req/s, p50 {_ms(m.p50_ms)}, p99 {_ms(m.p99_ms)}, "
                f"errors {m.bad_status + m.socket_errors}, peak RSS {_mib(self.rss_kib)}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_ratios(rows: list[Row]) -> None:
    """req/s of each row relative to ``nginx`` and ``direct`` measured in the same run."""
    baselines = {
        row.scenario: row.measurement.rps
        for row in rows
        if row.measurement is not None and row.measurement.rps > 0
    }
    for row in rows:
        if row.measurement is None:
            continue
        if "nginx" in baselines:
            row.vs_nginx = row.measurement.rps / baselines["nginx"]
        if "direct" in baselines:
            row.vs_direct = row.measurement.rps / baselines["direct"]


def format_table(rows: list[Row]) -> str:
    """A Markdown table, so it can be pasted into docs as is."""
    header = ["scenario", "req/s", "p50", "p99", "errors", "peak RSS", "cpu µs/req",
              "vs nginx", "vs direct"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row.measurement
        if m is None:
            cells = [row.scenario, row.status, "", "", "", "", "", "", ""]
        else:
            cells = [
                row.scenario, f"{m.rps:,.0f}", _ms(m.p50_ms), _ms(m.p99_ms),
                str(m.bad_status + m.socket_errors), _mib(row.rss_kib),
                "-" if row.cpu_us is None else f"{row.cpu_us:.1f}",
                _ratio(row.vs_nginx), _ratio(row.vs_direct),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Delta:
    label: str
    scenario: str
    baseline: str
    mode: str
    #: scenario minus baseline, in milliseconds (None when either has no figure).
    p50_ms: float | None
    p99_ms: float | None
    #: req/s of the scenario over the baseline's.
    rps_ratio: float | None
    #: the round of ``--rounds`` both scenarios were measured in.
    round: int = 1


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def deltas(rows: list[Row]) -> list[Delta]:
    """The :data:`COMPARISONS` whose two scenarios both have a measurement in ``rows``
    (rows of one load mode: differences across modes mean nothing)."""
    measured = {row.scenario: (row.mode, row.measurement, row.round)
                for row in rows if row.measurement is not None}
    found = []
    for label, name, baseline_name in COMPARISONS:
        if name not in measured or baseline_name not in measured:
            continue
        (mode, m, number), (_, b, _) = measured[name], measured[baseline_name]
        found.append(Delta(
            label, name, baseline_name, mode,
            _minus(m.p50_ms, b.p50_ms), _minus(m.p99_ms, b.p99_ms),
            m.rps / b.rps if b.rps > 0 else None, number,
        ))
    return found


def _signed_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} ms"


def format_deltas(found: list[Delta]) -> str:
    """The comparisons as a Markdown table; empty when there are none."""
    if not found:
        return ""
    lines = ["| added by | scenario vs baseline | p50 added | p99 added | req/s ratio |",
             "|---|---|---|---|---|"]
    for delta in found:
        lines.append(
            f"| {delta.label} | {delta.scenario} vs {delta.baseline} | "
            f"{_signed_ms(delta.p50_ms)} | {_signed_ms(delta.p99_ms)} | "
            f"{_ratio(delta.rps_ratio)} |"
        )
    return "\n".join(lines)


def write_json(
    directory: Path,
    environment: dict[str, Any],
    rows: list[Row],
    found: list[Delta] | None = None,
    sections: dict[str, Any] | None = None,
) -> Path:
    """The run as JSON; ``sections`` are further top-level keys (e.g. ``http2``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(
        {
            "environment": environment,
            "results": [asdict(row) for row in rows],
            "deltas": [asdict(delta) for delta in found or []],
            **(sections or {}),
        },
        indent=2,
    ) + "\n")
    return path
