"""Response flags: what the access log, metrics and ``on_complete`` say went wrong.

The letters are Envoy's, each kept to its Envoy meaning (``%RESPONSE_FLAGS%``), so
dashboards and runbooks written for Envoy read sidemesh's logs unchanged. sidemesh adds
flags of its own only for what Envoy has no letter for; those are marked
:attr:`ResponseFlag.sidemesh_only` and documented in ``docs/operations.md``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ResponseFlag"]

_SIDEMESH_ONLY = frozenset({"PA", "PE"})


class ResponseFlag(StrEnum):
    """One response flag; a ``str`` equal to its letters (``ResponseFlag.UF == "UF"``)."""

    #: UH: no healthy upstream endpoint to send the request to.
    NO_HEALTHY_UPSTREAM = "UH"
    #: UF: the connection to the upstream failed (refused, timed out, TLS rejected).
    UPSTREAM_CONNECTION_FAILURE = "UF"
    #: UO: a circuit breaker overflowed (connections, pending, requests, retries).
    UPSTREAM_OVERFLOW = "UO"
    #: NR: no route matched the request.
    NO_ROUTE_FOUND = "NR"
    #: URX: the retry limit was reached (attempts, budget, or the core refused a retry).
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    #: NC: the route's cluster does not exist.
    NO_CLUSTER_FOUND = "NC"
    #: DC: the client went away before the response was complete.
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    #: UT: the upstream did not answer in time (per-try or route timeout).
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    #: UC: the upstream closed or reset the connection.
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    #: UPE: the upstream sent an invalid HTTP response.
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    #: DPE: the client sent an invalid HTTP request.
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    #: PA (sidemesh only): a policy answered the request itself (a denial, a redirect).
    POLICY_ANSWERED = "PA"
    #: PE (sidemesh only): a policy raised; the client got a generic 500.
    POLICY_ERROR = "PE"

    @property
    def sidemesh_only(self) -> bool:
        """Whether this flag is sidemesh's own rather than one of Envoy's."""
        return self.value in _SIDEMESH_ONLY
