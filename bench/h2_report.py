"""The HTTP/2 rows: one per target and load, printed as two Markdown tables."""

from __future__ import annotations

from dataclasses import dataclass

from bench.load import Measurement

__all__ = ["H2Row", "add_h2_ratios", "format_h2_costs", "format_h2_table", "h1_load_label"]


def h1_load_label(connections: int) -> str:
    """The load label of the HTTP/1.1 row of a target measured with both versions."""
    return f"wrk -c {connections} (HTTP/1.1)"


@dataclass
class H2Row:
    target: str
    #: what the proxy speaks on each side, e.g. "h2 -> h1".
    path: str
    #: the load generator and its shape, e.g. "h2load -c 4 -m 32".
    load: str
    #: "ok", "failed: <reason>" or "skipped: <reason>"
    status: str
    measurement: Measurement | None = None
    rss_kib: int | None = None
    #: CPU time of the proxy's processes per request served, in microseconds.
    cpu_us: float | None = None
    #: req/s over nginx's on the same path and load, in the same run.
    vs_nginx: float | None = None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def add_h2_ratios(rows: list[H2Row], nginx_targets: set[str]) -> None:
    """req/s of each row over the nginx target's with the same path and load."""
    nginx = {(row.path, row.load): row.measurement.rps for row in rows
             if row.target in nginx_targets and row.measurement is not None
             and row.measurement.rps > 0}
    for row in rows:
        baseline = nginx.get((row.path, row.load))
        if row.measurement is not None and baseline:
            row.vs_nginx = row.measurement.rps / baseline


def format_h2_table(rows: list[H2Row]) -> str:
    header = ["target", "path", "load", "req/s", "p50", "p99", "errors", "peak RSS",
              "cpu µs/req", "vs nginx"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row.measurement
        if m is None:
            cells = [row.target, row.path, row.load, row.status, *[""] * 6]
        else:
            cells = [row.target, row.path, row.load, f"{m.rps:,.0f}", _ms(m.p50_ms),
                     _ms(m.p99_ms), str(m.bad_status + m.socket_errors),
                     "-" if row.rss_kib is None else f"{row.rss_kib / 1024:.1f} MiB",
                     _num(row.cpu_us, 1), _num(row.vs_nginx)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_h2_costs(rows: list[H2Row]) -> str:
    """What HTTP/2 costs against HTTP/1.1 on the same route of the same process: each
    HTTP/2 load next to the HTTP/1.1 one of its target; empty when none ran both."""
    h1 = {row.target: row for row in rows
          if row.load.startswith("wrk ") and row.measurement is not None}
    lines = ["| target | HTTP/2 load | req/s h1 | req/s h2 | h2 / h1 | cpu µs/req h1 | "
             "cpu µs/req h2 | h2 / h1 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = h1.get(row.target)
        if base is None or row is base or row.measurement is None or \
                base.measurement is None:
            continue
        rps_ratio = row.measurement.rps / base.measurement.rps if base.measurement.rps \
            else None
        cpu_ratio = row.cpu_us / base.cpu_us if row.cpu_us and base.cpu_us else None
        lines.append(
            f"| {row.target} | {row.load} | {base.measurement.rps:,.0f} | "
            f"{row.measurement.rps:,.0f} | {_num(rps_ratio)} | {_num(base.cpu_us, 1)} | "
            f"{_num(row.cpu_us, 1)} | {_num(cpu_ratio)} |")
    return "\n".join(lines) if len(lines) > 2 else ""
