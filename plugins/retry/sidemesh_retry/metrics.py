"""The retry plugin's Prometheus counters, on prometheus_client's default registry (the
one the admin ``/metrics`` endpoint serves). The core already counts attempts and
retries per cluster (``sidemesh_retries_total``); these say why retries happened or not.
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["RETRY_ATTEMPTS", "RETRY_OVERFLOW", "RETRY_SUCCESS"]

RETRY_ATTEMPTS = Counter(
    "sidemesh_retry_attempts",
    "Retries asked for by the retry policy (Envoy upstream_rq_retry).",
    ["cluster"],
)
RETRY_SUCCESS = Counter(
    "sidemesh_retry_success",
    "Requests that failed at first and succeeded on a retry (Envoy upstream_rq_retry_success).",
    ["cluster"],
)
RETRY_OVERFLOW = Counter(
    "sidemesh_retry_overflow",
    "Retriable failures returned as they were: budget (retry budget exhausted) and "
    "max_retries (the circuit's cap) are Envoy's upstream_rq_retry_overflow; attempts "
    "(no retry left) is upstream_rq_retry_limit_exceeded.",
    ["cluster", "reason"],
)
