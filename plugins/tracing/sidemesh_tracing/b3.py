"""B3 propagation (openzipkin/b3-propagation): the single ``b3`` header and the
``x-b3-*`` headers."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["B3Context", "format_b3_single", "parse_b3_multi", "parse_b3_single"]

_HEX = re.compile("[0-9a-f]*")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class B3Context:
    """What a B3 header carried. ``trace_id`` is padded to 32 hex characters (B3 allows
    64-bit ids; W3C needs 128). Ids are ``None`` for a sampling-only header (``b3: 0``).
    ``sampled`` is ``None`` when the caller deferred the decision."""

    trace_id: str | None
    span_id: str | None
    sampled: bool | None
    debug: bool = False


def _hex_id(text: str, *lengths: int) -> str | None:
    if len(text) not in lengths or not _HEX.fullmatch(text) or not text.strip("0"):
        return None
    return text


def _sampling(text: str) -> tuple[bool | None, bool] | None:
    """``(sampled, debug)`` from a sampling state, or ``None`` when it is invalid."""
    match text:
        case "1" | "true":
            return True, False
        case "0" | "false":
            return False, False
        case "d":
            return True, True
    return None


def parse_b3_single(values: list[str]) -> B3Context | None:
    """Parse ``b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`` or a bare
    sampling state (``b3: 0``). Duplicated or malformed headers give ``None``."""
    if len(values) != 1:
        return None
    parts = values[0].strip(_OWS).split("-")
    if len(parts) == 1:
        decision = _sampling(parts[0])
        return None if decision is None or decision[0] is None else B3Context(
            None, None, decision[0], decision[1]
        )
    if len(parts) > 4:
        return None
    trace_id = _hex_id(parts[0], 16, 32)
    span_id = _hex_id(parts[1], 16)
    if trace_id is None or span_id is None:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        decision = _sampling(parts[2])
        if decision is None:
            return None
        sampled, debug = decision
    if len(parts) == 4 and _hex_id(parts[3], 16) is None:
        return None
    return B3Context(trace_id.rjust(32, "0"), span_id, sampled, debug)


def parse_b3_multi(get: dict[str, list[str]]) -> B3Context | None:
    """Parse ``x-b3-traceid``, ``x-b3-spanid``, ``x-b3-sampled`` and ``x-b3-flags``
    (``x-b3-parentspanid`` is not needed: our span's parent is the caller's span).

    :param get: the ``x-b3-*`` field lines by lower-case name.
    """
    def one(name: str) -> str | None:
        lines = get.get(name, [])
        return lines[0].strip(_OWS) if len(lines) == 1 else None

    sampled: bool | None = None
    debug = one("x-b3-flags") == "1"
    raw_sampled = one("x-b3-sampled")
    if raw_sampled is not None:
        decision = _sampling(raw_sampled)
        if decision is not None:
            sampled = decision[0]
    if debug:
        sampled = True
    raw_trace, raw_span = one("x-b3-traceid"), one("x-b3-spanid")
    if raw_trace is None and raw_span is None:
        return B3Context(None, None, sampled, debug) if sampled is not None else None
    trace_id = _hex_id(raw_trace or "", 16, 32)
    span_id = _hex_id(raw_span or "", 16)
    if trace_id is None or span_id is None:
        return None
    return B3Context(trace_id.rjust(32, "0"), span_id, sampled, debug)


def format_b3_single(
    trace_id: str, span_id: str, sampled: bool, debug: bool, parent_span_id: str
) -> str:
    state = "d" if debug else "1" if sampled else "0"
    return f"{trace_id}-{span_id}-{state}-{parent_span_id}"
