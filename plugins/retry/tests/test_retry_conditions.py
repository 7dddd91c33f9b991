"""retry_on meanings, back-off bounds and Retry-After parsing, on real Attempt objects."""

from __future__ import annotations

import email.utils
import time

from sidemesh import Attempt, Headers, Response, ResponseFlag
from sidemesh_retry.conditions import RetryOn, backoff, retry_after


def _status(code: int) -> Attempt:
    return Attempt(1, None, Response(code))


def _failed(flag: str) -> Attempt:
    return Attempt(1, None, flag=ResponseFlag(flag))


def test_5xx_means_any_5xx_and_any_failure_before_a_response() -> None:
    on = RetryOn(["5xx"], [])
    assert all(on(_status(code)) for code in (500, 501, 502, 503, 504, 599))
    assert not any(on(_status(code)) for code in (200, 404, 409, 429))
    assert all(on(_failed(flag)) for flag in ("UF", "UC", "UT", "UPE"))


def test_gateway_error_is_502_503_504_and_failures() -> None:
    on = RetryOn(["gateway-error"], [])
    assert [on(_status(c)) for c in (500, 502, 503, 504)] == [False, True, True, True]
    assert on(_failed("UF")) and on(_failed("UC")) and on(_failed("UT"))


def test_reset_connect_failure_4xx_and_status_codes() -> None:
    reset = RetryOn(["reset"], [])
    assert reset(_failed("UC")) and reset(_failed("UT")) and reset(_failed("UF"))
    assert not reset(_status(503))
    connect = RetryOn(["connect-failure"], [])
    assert connect(_failed("UF")) and not connect(_failed("UC")) and not connect(_failed("UT"))
    assert RetryOn(["retriable-4xx"], [])(_status(409))
    assert not RetryOn(["retriable-4xx"], [])(_status(404))
    codes = RetryOn(["retriable-status-codes"], [429, 503])
    assert codes(_status(429)) and codes(_status(503)) and not codes(_status(502))
    # the codes only count when retriable-status-codes is asked for
    assert not RetryOn(["reset"], [503])(_status(503))


def test_never_retried_overflow_and_no_upstream() -> None:
    on = RetryOn(["5xx", "gateway-error", "reset", "connect-failure"], [])
    assert not on(_failed("UO")) and not on(_failed("UH"))


def test_backoff_is_jittered_exponential_and_capped() -> None:
    for retry, ceiling in ((1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (40, 0.25)):
        waits = [backoff(retry, 0.025, 0.25) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # full jitter spreads over the whole range


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8.0 <= (retry_after(date, now=now) or 0) <= 10.5
    assert retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


def _grpc(code: int, where: str = "headers") -> Attempt:
    response = Response(200, Headers([("content-type", "application/grpc")]))
    if where == "headers":  # a trailers-only answer: the error before any message
        response.headers.set("grpc-status", str(code))
    return Attempt(1, None, response)


def test_grpc_conditions_read_the_status_of_a_trailers_only_answer() -> None:
    on = RetryOn(["unavailable", "cancelled"], [])
    assert on(_grpc(14), grpc=True) and on(_grpc(1), grpc=True)
    assert not any(on(_grpc(code), grpc=True) for code in (0, 4, 13))
    # A 200 with messages (grpc-status comes later, in trailers) is never retried.
    assert not on(_grpc(14, where="trailers"), grpc=True)
    # Only a gRPC call's answer is read for a grpc-status.
    assert not on(_grpc(14), grpc=False)
    every = RetryOn(["deadline-exceeded", "resource-exhausted", "internal"], [])
    assert [every(_grpc(c), grpc=True) for c in (4, 8, 13, 14)] == [True, True, True, False]
    # HTTP conditions do not read grpc-status.
    assert not RetryOn(["5xx", "retriable-status-codes"], [503])(_grpc(14), grpc=True)
