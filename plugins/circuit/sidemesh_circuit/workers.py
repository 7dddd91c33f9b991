"""The circuit policy when the sidecar runs several workers (``--concurrency N``).

Envoy's circuit breakers and outlier ejections are cluster-wide whichever worker thread
serves a request; here the workers are processes, so both go through the counters they
share (:func:`sidemesh.shared_counter`):

- ``max_requests`` counts the requests every worker admitted: N in total, not N per
  worker. Two workers admitting at the same instant may both pass, as two of Envoy's
  threads may.
- An ejection is published (its end, and the endpoint's ejection count) with a
  per-cluster generation; every worker checks the generation on each request and takes
  the ejections it has not seen, so no worker sends to an endpoint another ejected.
"""

from __future__ import annotations

import time
from typing import Any

from sidemesh import (
    ClusterView,
    EndpointView,
    PolicyContext,
    Request,
    Response,
    ResponseFlag,
    SharedCounter,
    StashKey,
    shared_counter,
)

from .outlier import OutlierDetector, OutlierSettings, _Host
from .policy import CircuitPolicy

__all__ = ["SharedOutlierDetector", "WorkersCircuitPolicy"]

#: the cluster-wide count a request admitted by max_requests holds until it completes.
_ADMITTED = StashKey[SharedCounter]("circuit.admitted")
_MICROS = 1_000_000


class SharedOutlierDetector(OutlierDetector):
    """Outlier detection whose ejections every worker honours."""

    def __init__(
        self, settings: OutlierSettings, cluster: ClusterView, shared: dict[str, Any]
    ) -> None:
        super().__init__(settings, cluster, shared)
        prefix = f"circuit/{cluster.name}"
        self._prefix = prefix
        #: bumped by each ejection any worker makes.
        self._generation = shared_counter(f"{prefix}/ejections")
        self._seen = shared.setdefault("seen_generation", [-1])

    def _counters(self, endpoint: EndpointView) -> tuple[SharedCounter, SharedCounter]:
        key = f"{self._prefix}/{endpoint.address}"
        return shared_counter(f"{key}/ejected_until_us"), shared_counter(f"{key}/count")

    def sync(self) -> None:
        """Take the ejections other workers made since the last look."""
        generation = self._generation.total
        if generation == self._seen[0]:
            return
        self._seen[0] = generation
        now = time.monotonic()
        hosts = self._state.hosts
        for endpoint in self.cluster.endpoints:
            until_us, count = self._counters(endpoint)
            until = until_us.highest / _MICROS
            if until <= now or until <= endpoint.ejected_until:
                continue
            endpoint.eject(until - now)
            # eject() counted one; the ejecting worker's count is the cluster's.
            extra = endpoint.ejection_count - count.highest
            if extra > 0:
                endpoint.forgive(extra)
            host = hosts.get(endpoint.address)
            if host is None:
                host = hosts[endpoint.address] = _Host()
            host.ejected_until = endpoint.ejected_until
            host.consecutive_5xx = host.consecutive_gateway = 0

    def _eject(self, endpoint: EndpointView, host: _Host, reason: str, now: float) -> None:
        before = endpoint.ejected_until
        super()._eject(endpoint, host, reason, now)
        if endpoint.ejected_until != before:
            until_us, count = self._counters(endpoint)
            until_us.set(int(endpoint.ejected_until * _MICROS))
            count.set(endpoint.ejection_count)
            self._generation.add(1)


class WorkersCircuitPolicy(CircuitPolicy):
    """:class:`CircuitPolicy` counting and ejecting across the sidecar's workers."""

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        cluster = context.cluster
        self._admitted = (shared_counter(f"circuit/{cluster.name}/requests")
                          if cluster is not None else None)

    @staticmethod
    def detector(
        settings: OutlierSettings, cluster: ClusterView, shared: dict[str, Any]
    ) -> OutlierDetector:
        return SharedOutlierDetector(settings, cluster, shared)

    def on_request(self, request: Request) -> Response | None:
        cluster = self.context.cluster
        admitted = self._admitted
        if cluster is None or admitted is None or request.cluster != cluster.name:
            return None
        if isinstance(self._detector, SharedOutlierDetector):
            self._detector.sync()
        # This worker's own count is exact; the others' is what they admitted.
        if cluster.active_requests + admitted.total - admitted.mine >= self._max_requests:
            cluster.count_overflow("max_requests")
            request.add_flag(ResponseFlag.UPSTREAM_OVERFLOW)
            return Response.overflow()
        admitted.add(1)
        request.stash[_ADMITTED] = admitted
        return None

    def on_complete(
        self, request: Request, response: Response | None, flag: ResponseFlag | None
    ) -> None:
        admitted = request.stash.get(_ADMITTED, None)
        if admitted is not None:
            admitted.add(-1)
            del request.stash[_ADMITTED]
