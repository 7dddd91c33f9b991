"""Durations as written in configs and flags."""

from __future__ import annotations

import re

import pytest

from sidemesh.api.durations import DURATION_PATTERN, format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("0s", 0.0), ("1.5s", 1.5),
    ("0.5ms", 0.0005), ("90m", 5400.0),
])
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert re.match(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["", "2", "s", "-1s", "2 s", " 2s", "2S", "1d", "1.s",
                                  "ms", "1e3ms", "2s ", "\uff11s", "2s\n"])
def test_rejects_with_a_message_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration.*e\.g\. '250ms'"):
        parse_duration(text)
    assert not re.fullmatch(DURATION_PATTERN, text)


def test_non_strings_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(5)  # type: ignore[arg-type]


def test_format_round_trips() -> None:
    for text in ("250ms", "2s", "60s", "0s"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
    assert format_duration(0.25) == "250ms" and format_duration(3.0) == "3s"
