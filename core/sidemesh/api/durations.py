"""Durations as users write them in configs and flags: Go's syntax, as Istio and Envoy
users know it (``250ms``, ``1m30s``, ``1.5h``, ``500us``).

A duration is what Go's ``time.ParseDuration`` accepts, without a sign: one or more
decimal numbers, each with a unit (``ns``, ``us`` or ``µs``, ``ms``, ``s``, ``m``,
``h``), or a bare ``0``. The same pattern is used by the JSON Schemas (core and plugins),
so a string the schema accepts always parses here.
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

__all__ = ["DURATION_PATTERN", "duration_argument", "format_duration", "parse_duration"]

#: Regex of a duration string. ``\u00b5`` (micro sign) and ``\u03bc`` (Greek mu) are both
#: accepted for microseconds, as Go does.
DURATION_PATTERN = (
    "^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"
)

_NS_PER_UNIT = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_RE = re.compile(DURATION_PATTERN)
_PART_RE = re.compile("([0-9.]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
# Go's limit (an int64 of nanoseconds, about 292 years): what Istio's tools accept.
_MAX_NS = 2**63 - 1
_MAX_SECONDS = _MAX_NS / 10**9  # the float nearest to it, a few hundred ns above
_LONGEST = "2562047h47m16.854775807s"
_EXAMPLES = "e.g. '250ms', '2s', '1m30s', '1.5h'"


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _nanoseconds(text: str) -> Fraction:
    if not isinstance(text, str):
        raise ValueError(
            f"expected a duration string such as '250ms', '2s' or '1m30s', "
            f"got {type(text).__name__} {text!r}"
        )
    # fullmatch: "$" alone would also match before a trailing newline.
    if _DURATION_RE.fullmatch(text) is None:
        raise ValueError(
            f"{_shown(text)} is not a duration: write numbers with units (h, m, s, ms, us, "
            f"ns), {_EXAMPLES}"
        )
    total = sum(
        (Fraction(number) * _NS_PER_UNIT[unit] for number, unit in _PART_RE.findall(text)),
        Fraction(0),
    )
    if total > _MAX_NS:
        raise ValueError(
            f"{_shown(text)} is too long a duration: the longest is {_LONGEST}"
        )
    return total


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text`` (``"1m30s"`` -> ``90.0``).

    :raises ValueError: when ``text`` is not a duration, or is longer than Go allows
        (``2562047h47m16.854775807s``); the message says what is expected.
    """
    return float(_nanoseconds(text) / 10**9)


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Render seconds as :func:`parse_duration` reads them, as Go's ``Duration.String``
    does but without zero parts and with ``us`` for microseconds: ``0.25`` ->
    ``"250ms"``, ``90`` -> ``"1m30s"``, ``3600`` -> ``"1h"``, ``0`` -> ``"0s"``.
    Precision is a nanosecond, as in Go.

    :raises ValueError: for a negative, NaN or too long a number of seconds.
    """
    if not 0 <= seconds <= _MAX_SECONDS:
        raise ValueError(f"a duration is between 0 and {_LONGEST}, got {seconds!r} seconds")
    # The shortest decimal that reads back as this float, so 0.1 is 100ms exactly; the
    # float of the longest duration is a little above it, and stands for it.
    ns = min(round(Fraction(repr(float(seconds))) * 10**9), _MAX_NS)
    if ns == 0:
        return "0s"
    if ns < 10**9:
        unit, size = next((u, s) for u, s in (("ms", 10**6), ("us", 10**3), ("ns", 1))
                          if ns >= s)
        return _decimal(ns, size) + unit
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    return text + (_decimal(rest, 10**9) + "s" if rest else "")


def duration_argument(text: str) -> float:
    """``parse_duration`` as an argparse ``type``: a bad flag gets the same message as a
    bad config value (argparse hides a ``ValueError``'s own)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
