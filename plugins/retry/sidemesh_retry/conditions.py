"""What is retried and how long to wait: Envoy's ``retry_on`` meanings, fully jittered
exponential back-off, and ``Retry-After``."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterable

from sidemesh import Attempt, ResponseFlag

__all__ = ["GRPC_CONDITIONS", "IDEMPOTENT", "RetryOn", "backoff", "retry_after"]

#: methods retried without ``retry_non_idempotent`` (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: failures before a response head: connection refused or timed out (UF), reset or closed
#: (UC), timeout (UT), unparsable response (UPE). UO (overflow) and UH (no healthy
#: upstream) are never retried; nor is a timeout of the route itself (the policy asks
#: ``Request.time_left``).
_CONNECT = frozenset({ResponseFlag.UPSTREAM_CONNECTION_FAILURE})
_RESET = frozenset(
    {
        ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
        ResponseFlag.UPSTREAM_CONNECTION_TERMINATION,
        ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
        ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
    }
)
_GATEWAY_CODES = frozenset({502, 503, 504})
#: Envoy's gRPC retry_on names and the grpc-status each retries.
GRPC_CONDITIONS = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}


class RetryOn:
    """``retry_on`` compiled once per policy into a single question: retry this attempt?"""

    __slots__ = ("_all_5xx", "_codes", "_flags", "grpc")

    def __init__(self, retry_on: Iterable[str], status_codes: Iterable[int]) -> None:
        conditions = set(retry_on)
        flags: set[ResponseFlag] = set()
        codes: set[int] = set()
        if conditions & {"5xx", "gateway-error", "reset"}:
            flags |= _RESET
        if "connect-failure" in conditions:
            flags |= _CONNECT
        if "gateway-error" in conditions:
            codes |= _GATEWAY_CODES
        if "retriable-4xx" in conditions:
            codes.add(409)
        if "retriable-status-codes" in conditions:
            codes |= set(status_codes)
        self._all_5xx = "5xx" in conditions
        self._flags = frozenset(flags)
        self._codes = frozenset(codes)
        #: the gRPC statuses retried (read from a trailers-only answer's head, as Envoy).
        self.grpc = frozenset(GRPC_CONDITIONS[c] for c in conditions if c in GRPC_CONDITIONS)

    def __call__(self, attempt: Attempt, grpc: bool = False) -> bool:
        """Whether to retry ``attempt``; ``grpc``: it answers a gRPC call (only those
        have a grpc-status to read, and reading it decodes the response's fields)."""
        response = attempt.response
        if response is None:
            return attempt.flag in self._flags
        status = response.status
        if status in self._codes or (self._all_5xx and status >= 500):
            return True
        return grpc and bool(self.grpc) and response.grpc_status in self.grpc


def backoff(retry: int, base: float, cap: float) -> float:
    """Envoy's fully jittered exponential back-off: a random wait in
    ``[0, min(cap, base * 2**(retry-1))]`` for the ``retry``-th retry (1-based)."""
    return random.uniform(0.0, min(cap, base * (2 ** min(retry - 1, 30))))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` value (delta-seconds or an HTTP date), or
    ``None`` when absent or unreadable. A date in the past means no wait."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
