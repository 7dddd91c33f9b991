"""What policies see of clusters and endpoints: read-only views, plus the few things a
policy is meant to change (an ejection, a circuit breaker's caps, its own counters).

The data path's :class:`~sidemesh.datapath.cluster.Cluster` and
:class:`~sidemesh.datapath.cluster.Endpoint` satisfy these protocols; their other
attributes (connection pools, accounting) are the core's and may change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["ClusterView", "ConnectionCaps", "EndpointView", "RetryCaps"]


class EndpointView(Protocol):
    """One upstream address of a cluster and its live state."""

    @property
    def cluster(self) -> str:
        """The cluster's name."""

    @property
    def address(self) -> str:
        """``host:port`` as written in the config."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def active_requests(self) -> int:
        """Requests in flight to this endpoint."""

    @property
    def ejected(self) -> bool:
        """Whether an outlier ejection is in force now."""

    @property
    def ejected_until(self) -> float:
        """The ``time.monotonic()`` end of the current ejection (0 when none)."""

    @property
    def ejection_count(self) -> int:
        """Ejections so far; outlier detection lengthens each ejection by it."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters policies may add to; shown on the admin API's ``/clusters``."""

    def eject(self, seconds: float) -> None:
        """Stop offering this endpoint for ``seconds`` (outlier detection); counts one
        more ejection."""

    def forgive(self, ejections: int) -> None:
        """Forget up to ``ejections`` past ejections (after quiet intervals, as Envoy
        decrements its ejection multiplier)."""


class ConnectionCaps(Protocol):
    """A cluster's open upstream connections and the caps a circuit breaker sets on
    them (Envoy's ``max_connections`` and ``max_pending_requests``; ``None``: no cap)."""

    max_connections: int | None
    max_pending: int | None

    @property
    def open(self) -> int: ...

    @property
    def pending(self) -> int: ...


class RetryCaps(Protocol):
    """Retries in flight on a cluster and their cap (Envoy's ``max_retries`` circuit
    breaker; ``None``: no cap). A retry policy counts its retries here with
    :meth:`begin`/:meth:`end`; a circuit policy sets :attr:`max_active`."""

    max_active: int | None

    @property
    def active(self) -> int: ...

    def begin(self) -> None: ...

    def end(self) -> None: ...


class ClusterView(Protocol):
    """A named group of endpoints, as the applied config defines it."""

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Sequence[EndpointView]: ...

    @property
    def subsets(self) -> Mapping[str, Sequence[EndpointView]]:
        """Endpoints of each subset, by subset name."""

    @property
    def active_requests(self) -> int:
        """Requests in flight to this cluster."""

    @property
    def connections(self) -> ConnectionCaps: ...

    @property
    def retries(self) -> RetryCaps: ...

    @property
    def overflow(self) -> Mapping[str, int]:
        """Overflow counts by limit name (``max_requests``, ``retry_budget``...)."""

    def count_overflow(self, limit: str) -> None:
        """Count one request refused by ``limit`` (shown on ``/clusters`` and metrics)."""

    def available(self) -> Sequence[EndpointView]:
        """Endpoints not ejected and healthy (all of them when none is: panic mode)."""
