"""Clusters, endpoints and load balancing.

Endpoint objects carry the state users see on ``/clusters`` (active requests, ejection)
and are kept across config reloads when the cluster still lists the same address, so an
ejection or a connection pool survives a config change that does not touch it.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.limits import ConnectionLimit, RetryLimit
from sidemesh.datapath.pool import ConnectionPool

if TYPE_CHECKING:
    from sidemesh.datapath.model import ClusterConfig, EndpointConfig

__all__ = ["Cluster", "Endpoint", "make_balancer"]


class Endpoint:
    """One upstream address of a cluster, with its live state.

    ``ejected_until`` is a ``time.monotonic()`` deadline (0 when not ejected); policies
    doing outlier detection set it with :meth:`eject` and the core stops offering the
    endpoint until it passes.
    """

    __slots__ = (
        "active_requests",
        "address",
        "cluster",
        "ejected_until",
        "ejection_count",
        "healthy",
        "host",
        "labels",
        "pools",
        "port",
        "stats",
    )

    def __init__(self, cluster: str, config: EndpointConfig) -> None:
        self.cluster = cluster
        self.address = config.address
        self.host = config.host
        self.port = config.port
        self.labels = dict(config.labels)
        self.healthy = True
        self.active_requests = 0
        self.ejected_until = 0.0
        self.ejection_count = 0
        #: free-form counters policies may add to (shown on ``/clusters``).
        self.stats: dict[str, int] = {}
        self.pools: dict[Any, ConnectionPool] = {}

    def __repr__(self) -> str:
        return f"Endpoint({self.cluster}/{self.address})"

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0 and time.monotonic() < self.ejected_until

    def eject(self, seconds: float) -> None:
        self.ejection_count += 1
        self.ejected_until = time.monotonic() + seconds

    def forgive(self, ejections: int) -> None:
        self.ejection_count = max(0, self.ejection_count - ejections)

    def describe(self) -> dict[str, Any]:
        remaining = self.ejected_until - time.monotonic() if self.ejected else 0.0
        return {
            "address": self.address,
            "labels": self.labels,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "ejection_count": self.ejection_count,
            "ejected_until": (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + remaining))
                if remaining > 0
                else None
            ),
            "ejection_seconds_left": round(remaining, 3),
            "active_requests": self.active_requests,
            "connections": sum(p.size for p in self.pools.values()),
            "stats": dict(self.stats),
        }


Balancer = Callable[[Sequence[Endpoint]], Endpoint]


def make_balancer(kind: str) -> Balancer:
    """A picking function for one cluster.

    ``least_request`` is Envoy's: the better of two random choices by active requests,
    which avoids the herd a strict minimum causes when many proxies share endpoints.
    """
    if kind == "random":
        return random.choice
    if kind == "least_request":

        def least_request(endpoints: Sequence[Endpoint]) -> Endpoint:
            if len(endpoints) == 1:
                return endpoints[0]
            a, b = random.sample(range(len(endpoints)), 2)
            first, second = endpoints[a], endpoints[b]
            return first if first.active_requests <= second.active_requests else second

        return least_request
    counter = itertools.count(random.randrange(1024))

    def round_robin(endpoints: Sequence[Endpoint]) -> Endpoint:
        return endpoints[next(counter) % len(endpoints)]

    return round_robin


# A plain Python class even when compiled: plugins keep weak references to clusters,
# which compiled (native) classes refuse.
@mypyc_attr(native_class=False)
class Cluster:
    """A named group of endpoints, its subsets and its load balancer."""

    def __init__(self, config: ClusterConfig, previous: Cluster | None = None) -> None:
        self.name = config.name
        self.config = config
        self.connect_timeout = config.connect_timeout
        self.endpoints: list[Endpoint] = []
        self.subsets: dict[str, list[Endpoint]] = {}
        self.set_endpoints(config, previous.endpoints if previous is not None else [])
        self.pick = make_balancer(config.load_balancer)
        # Requests in flight on the previous snapshot count against the previous object.
        self.active_requests = 0
        #: overflow counters by limit name (``max_requests`` ...), shown on ``/clusters``;
        #: one dictionary for the cluster's whole life, across reloads.
        self.overflow: dict[str, int] = previous.overflow if previous is not None else {}
        #: open connections across endpoints, and their caps (set by a circuit policy).
        self.connections: ConnectionLimit = ConnectionLimit(
            self.overflow, previous.connections if previous is not None else None
        )
        #: retries in flight on this snapshot's cluster: counted by a retry policy,
        #: capped by a circuit policy.
        self.retries = RetryLimit()

    def set_endpoints(self, config: ClusterConfig, kept: list[Endpoint]) -> None:
        """Take ``config``'s endpoints (and subsets), keeping the objects of ``kept`` that
        have the same address and labels (their ejection, pools and counters). Both lists
        are replaced at once: a request picks from the old set or the new one."""
        known = {e.address: e for e in kept}
        endpoints: list[Endpoint] = []
        for endpoint_config in config.endpoints:
            endpoint = known.get(endpoint_config.address)
            if endpoint is None or endpoint.labels != endpoint_config.labels:
                endpoint = Endpoint(config.name, endpoint_config)
            endpoints.append(endpoint)
        self.subsets = {
            subset.name: [
                e
                for e in endpoints
                if all(e.labels.get(k) == v for k, v in subset.labels.items())
            ]
            for subset in config.subsets
        }
        self.endpoints = endpoints
        self.config = config

    def new_pool(
        self, endpoint: Endpoint, setup: Callable[[], ConnectionSetup] | None
    ) -> ConnectionPool:
        """A pool of connections to ``endpoint`` in the cluster's protocol (``setup``
        makes each connection's TLS settings; ``None``: plain)."""
        protocol = self.config.protocol
        if protocol == "http2" or (protocol == "auto" and setup is not None):
            # Imported on the first HTTP/2 pool: most sidecars never make one.
            from sidemesh.datapath.h2_pool import H2Pool

            return H2Pool(endpoint.host, endpoint.port, setup, protocol == "auto")
        return ConnectionPool(endpoint.host, endpoint.port, setup)

    def count_overflow(self, limit: str) -> None:
        self.overflow[limit] = self.overflow.get(limit, 0) + 1

    def available(self) -> list[Endpoint]:
        """Endpoints not ejected; all of them when every one is ejected (Envoy's panic
        mode: better to try a bad host than to fail every request)."""
        now = time.monotonic()
        alive = [e for e in self.endpoints if e.ejected_until <= now and e.healthy]
        return alive if alive else list(self.endpoints)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "load_balancer": self.config.load_balancer,
            "active_requests": self.active_requests,
            "connections": self.connections.open,
            "pending_requests": self.connections.pending,
            "retries_active": self.retries.active,
            "overflow": dict(self.overflow),
            "subsets": {name: [e.address for e in eps] for name, eps in self.subsets.items()},
            "endpoints": [e.describe() for e in self.endpoints],
        }
