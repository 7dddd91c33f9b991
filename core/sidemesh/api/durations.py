"""Durations as users write them in configs and flags: ``250ms``, ``2s``, ``1m``, ``1h``.

The same pattern is used by the JSON Schemas (core and plugins), so a string the schema
accepts always parses here.
"""

from __future__ import annotations

import re

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

#: Regex of a duration string: a non-negative decimal number and a unit.
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"

_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text`` (``"250ms"`` -> ``0.25``).

    :raises ValueError: when ``text`` is not a duration; the message says what is
        expected.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"expected a duration string such as '250ms', '2s', '1m' or '1h', "
            f"got {type(text).__name__} {text!r}"
        )
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (ms, s, m or h), "
            f"e.g. '250ms', '2s', '1m', '1h'"
        )
    unit = match.group(2)
    return float(text[: -len(unit)]) * _UNIT_SECONDS[unit]


def format_duration(seconds: float) -> str:
    """Render seconds back in the config's notation (``0.25`` -> ``"250ms"``)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
