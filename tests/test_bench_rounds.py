"""``bench/run.py --rounds N``: each ratio taken within a round, summarized as a median
with the lowest and highest round, so one noisy run cannot decide a goal."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(REPO))
    return {name: importlib.import_module(f"bench.{name}") for name in ("load", "report",
                                                                        "rounds")}


def _round(bench: dict[str, ModuleType], number: int, rps: dict[str, float]) -> tuple:
    report = bench["report"]
    rows = []
    for name, value in rps.items():
        measurement = bench["load"].Measurement(
            rps=value, p50_ms=1.0, p99_ms=2.0 + number, requests=int(value), bad_status=0,
            socket_errors=0,
        )
        rows.append(report.Row(name, "ok", measurement=measurement, cpu_us=1e6 / value,
                               round=number))
    report.add_ratios(rows)
    return rows, report.deltas(rows)


def test_ratios_are_taken_per_round_and_summarized(bench: dict[str, ModuleType]) -> None:
    # Round 2 ran on a machine twice as slow: its req/s halve, its ratios do not move.
    rounds = [
        _round(bench, 1, {"nginx": 40_000, "sidemesh": 20_000, "sidemesh-plugins": 18_000}),
        _round(bench, 2, {"nginx": 20_000, "sidemesh": 10_000, "sidemesh-plugins": 9_200}),
        _round(bench, 3, {"nginx": 40_000, "sidemesh": 19_000, "sidemesh-plugins": 16_150}),
    ]
    table = bench["rounds"].format_rounds(rounds)
    assert table.startswith("3 rounds:")
    assert "| nginx | 40,000 (20,000-40,000) | 25.0 (25.0-50.0) | 1.00 (1.00-1.00) |" in table
    assert "| sidemesh | 19,000 (10,000-20,000) |" in table
    assert "| 0.50 (0.47-0.50) |" in table  # sidemesh vs nginx: 0.50, 0.50, 0.475
    # the plugins' ratio per round: 0.90, 0.92, 0.85; across rounds it would be 0.46-1.84
    plugins = next(line for line in table.splitlines() if "sidemesh-plugins vs sidemesh" in line)
    assert "| 0.90 (0.85-0.92) | 0.00 (0.00-0.00) |" in plugins


def test_one_round_has_no_summary_ranges(bench: dict[str, ModuleType]) -> None:
    table = bench["rounds"].format_rounds([_round(bench, 1, {"nginx": 40_000})])
    assert "| nginx | 40,000 | 25.0 | 1.00 |" in table


def test_rows_and_comparisons_record_their_round(bench: dict[str, ModuleType]) -> None:
    rows, found = _round(bench, 2, {"sidemesh": 20_000, "sidemesh-plugins": 18_000})
    assert {row.round for row in rows} == {2}
    assert [delta.round for delta in found] == [2]
