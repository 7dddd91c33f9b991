"""W3C Trace Context (level 2): ``traceparent`` and ``tracestate``, parsed to the letter.

Written by hand rather than borrowed from OpenTelemetry because OpenTelemetry's
tracestate parser follows an older grammar (``tenant@system`` keys with length limits
on each part, the whole header dropped for a duplicated key), and a sidecar must
forward what the current spec allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "FLAG_RANDOM",
    "FLAG_SAMPLED",
    "TRACESTATE_MAX_LENGTH",
    "TRACESTATE_MAX_MEMBERS",
    "ZERO_SPAN_ID",
    "ZERO_TRACE_ID",
    "TraceParent",
    "format_traceparent",
    "format_tracestate",
    "parse_traceparent",
    "parse_tracestate",
    "truncate_tracestate",
]

FLAG_SAMPLED = 0x01
#: Level 2: the trace id's right-most 7 bytes are random.
FLAG_RANDOM = 0x02
TRACESTATE_MAX_MEMBERS = 32
#: Vendors must propagate at least this many characters of the combined header.
TRACESTATE_MAX_LENGTH = 512
#: When truncating, entries longer than this go first.
TRACESTATE_LARGE_ENTRY = 128

_OWS = " \t"
_HEX = re.compile("[0-9a-f]*")
#: the one invalid value of each id.
ZERO_TRACE_ID = "0" * 32
ZERO_SPAN_ID = "0" * 16

#: Flags this version defines; the others are reserved and must be sent as zero.
_KNOWN_FLAGS = FLAG_SAMPLED | FLAG_RANDOM
# key = ( lcalpha / DIGIT ) 0*255 ( keychar ); keychar = lcalpha / DIGIT / "_" / "-" / "*"
# / "/" / "@". The older "tenant@system" rule (at most one "@", 241 + 14 characters) is gone.
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
# value = 0*255(chr) nblk-chr; chr = SP / nblk-chr; nblk-chr = printable ASCII but "," and "="
_VALUE_RE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid ``traceparent``: ids as lower-case hex, flags as an int."""

    trace_id: str
    parent_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & FLAG_SAMPLED)


def _is_hex(text: str) -> bool:
    # A regex, not all() over a generator: a frame per character adds up on every request.
    return _HEX.fullmatch(text) is not None


def parse_traceparent(values: list[str]) -> TraceParent | None:
    """Parse the ``traceparent`` field lines of a request.

    :param values: every ``traceparent`` field line, in order.
    :returns: the parsed header, or ``None`` when it is missing, duplicated or invalid
        (the caller then starts a new trace and ignores ``tracestate``).
    """
    if len(values) != 1:
        return None
    value = values[0].strip(_OWS)
    # version "-" trace-id "-" parent-id "-" trace-flags: 55 characters in version 00.
    if len(value) < 55:
        return None
    version = value[0:2]
    if not _is_hex(version) or version == "ff" or value[2] != "-":
        return None
    if version == "00" and len(value) != 55:
        return None
    # Future versions: parse the version-00 fields at the same places; whatever follows
    # the flags must start with a dash.
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if value[35] != "-" or value[52] != "-":
        return None
    if not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return None
    if trace_id == ZERO_TRACE_ID or parent_id == ZERO_SPAN_ID:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16) & _KNOWN_FLAGS)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    """The ``traceparent`` we send: always version 00, the only one we know how to write."""
    return f"00-{trace_id}-{span_id}-{flags & 0xFF:02x}"


def parse_tracestate(values: list[str]) -> list[tuple[str, str]] | None:
    """Parse the ``tracestate`` field lines of a request (combined in order, as HTTP
    allows a list header to be split over several lines).

    :returns: the list members as ``(key, value)`` in order, or ``None`` when the header
        cannot be parsed: a member that is not ``key=value`` by the grammar, or more than
        32 members. The spec lets a vendor drop such a header whole, and the W3C test suite
        (strictness 2) expects it. Empty members are dropped, and so is every repeat of a
        key after its first (the spec lets a vendor discard duplicates it did not make).
    """
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in values:
        for raw in line.split(","):
            member = raw.strip(_OWS)
            if not member:
                continue
            key, sep, val = member.partition("=")
            if not sep or not _KEY_RE.fullmatch(key) or not _VALUE_RE.fullmatch(val):
                return None
            if key in seen:
                continue
            seen.add(key)
            members.append((key, val))
            if len(members) > TRACESTATE_MAX_MEMBERS:
                return None
    return truncate_tracestate(members)


def _length(members: list[tuple[str, str]]) -> int:
    if not members:
        return 0
    return sum(len(k) + 1 + len(v) for k, v in members) + len(members) - 1


def truncate_tracestate(members: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Bring the list within 512 characters the way the spec asks: entries longer than
    128 characters are removed first (right-most first), then entries from the end."""
    if _length(members) <= TRACESTATE_MAX_LENGTH:
        return members
    kept = list(members)
    for index in range(len(kept) - 1, -1, -1):
        key, val = kept[index]
        if len(key) + 1 + len(val) > TRACESTATE_LARGE_ENTRY:
            del kept[index]
            if _length(kept) <= TRACESTATE_MAX_LENGTH:
                return kept
    while _length(kept) > TRACESTATE_MAX_LENGTH:
        kept.pop()
    return kept


def format_tracestate(members: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in members)
