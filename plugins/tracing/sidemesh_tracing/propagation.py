"""Reading the caller's trace context from a request and writing ours upstream.

W3C wins when a valid ``traceparent`` is present; otherwise a valid ``b3`` single
header, then the ``x-b3-*`` headers. A ``tracestate`` is only kept with a valid
``traceparent`` (the spec forbids reading it otherwise).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Literal

from sidemesh import Headers

from .b3 import format_b3_single, parse_b3_multi, parse_b3_single
from .w3c import (
    FLAG_RANDOM,
    FLAG_SAMPLED,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    format_traceparent,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

__all__ = [
    "B3_MULTI_HEADERS",
    "Incoming",
    "Propagation",
    "extract",
    "find_context",
    "inject",
    "new_ids",
    "new_span_id",
    "new_trace_id",
    "ratio_sampled",
]

Propagation = Literal["w3c", "b3", "b3multi"]

B3_MULTI_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
                    "x-b3-flags")
_ALL_HEADERS = ("traceparent", "tracestate", "b3", *B3_MULTI_HEADERS)
_TRACING_FIELDS = frozenset(_ALL_HEADERS)
# Level 2 suggests deciding on the right-most 7 bytes, the part guaranteed random.
_RANDOM_BITS = 56


@dataclass(slots=True)
class Incoming:
    """The context the request arrived with.

    :ivar trace_id: 32 lower-case hex characters (a fresh one when the request had none).
    :ivar parent_id: the caller's span id, or ``None`` when we start the trace.
    :ivar sampled: the caller's decision, or ``None`` when it left it to us.
    :ivar flags: W3C trace-flags to forward (the random bit among them).
    :ivar tracestate: the caller's tracestate members, forwarded unchanged.
    :ivar debug: B3 debug flag (forces sampling).
    :ivar source: which header the context came from (``w3c``, ``b3``, ``b3multi``,
        or ``None`` for a new trace).
    """

    trace_id: str
    parent_id: str | None
    sampled: bool | None
    flags: int = 0
    tracestate: list[tuple[str, str]] = field(default_factory=list)
    debug: bool = False
    source: Propagation | None = None


# Ids must be unique, not secret: pseudo-random bits, as OpenTelemetry's own id
# generator makes them (secrets.token_hex made a system call per id, three per
# request). All zeros is the one invalid value.
_random_bits = random.getrandbits
#: requests' worth of ids drawn at once: one big random number and one hex formatting
#: for all of them cost a fraction of three draws and three formattings per request.
_BATCH = 64
_ready: list[str] = []
# A forked worker must not hand out the ids its parent drew (random reseeds itself).
os.register_at_fork(after_in_child=_ready.clear)


def new_ids() -> tuple[str, str, str]:
    """A trace id and two span ids (our server span, the first attempt's client span):
    what a request needs, in one go."""
    while True:
        if not _ready:
            digits = f"{_random_bits(256 * _BATCH):0{64 * _BATCH}x}"
            _ready.extend(digits[i:i + 64] for i in range(0, 64 * _BATCH, 64))
        ids = _ready.pop()
        trace_id, server_id, client_id = ids[:32], ids[32:48], ids[48:]
        if trace_id != ZERO_TRACE_ID and server_id != ZERO_SPAN_ID and client_id != ZERO_SPAN_ID:
            return trace_id, server_id, client_id


def new_trace_id() -> str:
    trace_id = 0
    while not trace_id:
        trace_id = _random_bits(128)
    return f"{trace_id:032x}"


def new_span_id() -> str:
    span_id = 0
    while not span_id:
        span_id = _random_bits(64)
    return f"{span_id:016x}"


def ratio_sampled(trace_id: str, ratio: float) -> bool:
    """Deterministic on the trace id, so every sidecar on the path agrees on a root
    decision without talking to each other."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return int(trace_id[-14:], 16) < int(ratio * (1 << _RANDOM_BITS))


def extract(headers: Headers) -> Incoming:
    """The caller's context, or a new trace when it sent none (or only broken ones)."""
    found = find_context(headers)
    return Incoming(new_trace_id(), None, None, FLAG_RANDOM) if found is None else found


def find_context(headers: Headers) -> Incoming | None:
    """As :func:`extract`, but ``None`` when the request has no tracing field at all (an
    edge sidecar's usual case), so the caller makes the new trace from ids it has."""
    # A loop rather than a comprehension: no frame per request for a usually empty list.
    present: list[tuple[str, str]] = []
    for field_line in headers:
        if field_line[0] in _TRACING_FIELDS:
            present.append(field_line)
    if not present:
        return None
    headers = Headers(present)
    parent = parse_traceparent(headers.get_all("traceparent"))
    if parent is not None:
        state = parse_tracestate(headers.get_all("tracestate")) or []
        return Incoming(parent.trace_id, parent.parent_id, parent.sampled, parent.flags,
                        state, source="w3c")
    b3 = parse_b3_single(headers.get_all("b3")) if "b3" in headers else None
    source: Propagation = "b3"
    if b3 is None:
        b3 = parse_b3_multi({name: headers.get_all(name) for name in B3_MULTI_HEADERS
                             if name in headers})
        source = "b3multi"
    if b3 is not None and b3.trace_id is not None:
        flags = FLAG_SAMPLED if b3.sampled else 0
        return Incoming(b3.trace_id, b3.span_id, b3.sampled, flags, debug=b3.debug,
                        source=source)
    sampled = b3.sampled if b3 is not None else None
    debug = b3.debug if b3 is not None else False
    # Our ids are random bits, so level 2 lets us say so.
    return Incoming(new_trace_id(), None, sampled, FLAG_RANDOM, debug=debug)


def inject(
    headers: Headers,
    incoming: Incoming,
    span_id: str,
    parent_span_id: str,
    sampled: bool,
    formats: tuple[Propagation, ...],
) -> None:
    """Write the context of one upstream attempt into ``headers``: ``span_id`` is the
    attempt's client span, ``parent_span_id`` our server span.

    Headers of every known format are removed first: a stale ``b3`` left next to a fresh
    ``traceparent`` would make the upstream parent its span on the wrong caller.
    """
    for name, _ in headers:
        if name in _TRACING_FIELDS:
            # The list is rewritten only when there is something to drop: the caller's
            # context, or ours on a retry.
            headers.remove_all(_ALL_HEADERS)
            break
    flags = (incoming.flags & ~FLAG_SAMPLED) | (FLAG_SAMPLED if sampled else 0)
    trace_id = incoming.trace_id
    for fmt in formats:
        if fmt == "w3c":
            # add, not set: every tracing field was removed just above.
            headers.add("traceparent", format_traceparent(trace_id, span_id, flags))
            if incoming.tracestate:
                headers.add("tracestate", format_tracestate(incoming.tracestate))
        elif fmt == "b3":
            headers.add("b3", format_b3_single(trace_id, span_id, sampled, incoming.debug,
                                               parent_span_id))
        else:
            headers.add("x-b3-traceid", trace_id)
            headers.add("x-b3-spanid", span_id)
            headers.add("x-b3-parentspanid", parent_span_id)
            headers.add("x-b3-sampled", "1" if sampled else "0")
            if incoming.debug:
                headers.add("x-b3-flags", "1")
