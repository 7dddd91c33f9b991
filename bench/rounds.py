"""Several rounds of the same scenarios: medians and spreads of their ratios.

On a shared 2-core VM one run's req/s moves by 10-20 % (and a whole run can come out
twice as slow as the day before), so a ratio from one run can land on either side of a
goal. ``--rounds N`` runs every selected scenario once per round, N rounds in turn; a
ratio is always taken within one round (its two scenarios minutes apart at most, on
the same machine state), and the summary gives each ratio's median and range.
"""

from __future__ import annotations

from statistics import median

from bench.report import Delta, Row

__all__ = ["format_rounds"]


def _spread(values: list[float], spec: str = ".2f") -> str:
    if not values:
        return "-"
    text = format(median(values), spec)
    if len(values) > 1:
        text += f" ({format(min(values), spec)}-{format(max(values), spec)})"
    return text


def format_rounds(rounds: list[tuple[list[Row], list[Delta]]]) -> str:
    """A Markdown summary of the rounds of one load mode: per scenario its req/s, CPU
    per request and ratio to nginx; per comparison its req/s ratio and added p99 (each
    a median, with the lowest and highest round in brackets)."""
    names: list[str] = []
    labels: list[tuple[str, str, str]] = []
    for rows, found in rounds:
        names += [row.scenario for row in rows if row.scenario not in names]
        labels += [key for d in found if (key := (d.label, d.scenario, d.baseline))
                   not in labels]
    lines = [
        f"{len(rounds)} rounds: median (lowest-highest round); a ratio is taken within "
        "a round",
        "",
        "| scenario | req/s | cpu µs/req | vs nginx |",
        "|---|---|---|---|",
    ]
    for name in names:
        rows = [row for round_rows, _ in rounds for row in round_rows
                if row.scenario == name and row.measurement is not None]
        rps = [row.measurement.rps for row in rows if row.measurement is not None]
        cpu = [row.cpu_us for row in rows if row.cpu_us is not None]
        vs = [row.vs_nginx for row in rows if row.vs_nginx is not None]
        cells = [name, _spread(rps, ",.0f"), _spread(cpu, ".1f"), _spread(vs)]
        lines.append("| " + " | ".join(cells) + " |")
    if labels:
        lines += ["", "| added by | scenario vs baseline | req/s ratio | p99 added (ms) |",
                  "|---|---|---|---|"]
        for label, name, baseline in labels:
            found = [d for _, deltas in rounds for d in deltas
                     if (d.label, d.scenario, d.baseline) == (label, name, baseline)]
            ratios = [d.rps_ratio for d in found if d.rps_ratio is not None]
            p99 = [d.p99_ms for d in found if d.p99_ms is not None]
            lines.append(f"| {label} | {name} vs {baseline} | {_spread(ratios)} | "
                         f"{_spread(p99)} |")
    return "\n".join(lines)
