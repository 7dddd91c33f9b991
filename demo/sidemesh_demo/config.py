"""The demo mesh's layout (who listens where) and the sidecar configs pushed to the
control plane: plain mTLS first, then the traffic policy (90/10 split, retries,
outlier detection) as a second version, as a platform team would roll it out. ratings,
a gRPC service, is reached over HTTP/2 on every hop (``protocol: http2``)."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import Any

from sidemesh import testing

__all__ = ["CIRCUIT", "RETRY", "SPLIT", "TRUST_DOMAIN", "Instance", "Layout",
           "productpage_config", "ratings_config", "reviews_config", "spiffe_id"]

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
RETRY: dict[str, Any] = {"attempts": 2, "per_try_timeout": "1s",
                         "retry_on": ["gateway-error", "connect-failure", "reset"],
                         "base_interval": "10ms", "max_interval": "50ms"}
# Short times so an ejection and a return both fit in a one-minute demo; 50% so one
# ejected endpoint out of three is allowed (Envoy's default 10% would allow none).
CIRCUIT: dict[str, Any] = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "3s",
                           "max_ejection_percent": 50}
SPLIT: dict[str, Any] = {"destinations": [{"subset": "v1", "weight": 90},
                                          {"subset": "v2", "weight": 10}]}


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}"


@dataclass(frozen=True)
class Instance:
    """One reviews pod: its own loopback address, its app, its sidecar."""

    name: str
    version: str
    host: str


def _pod_hosts(count: int) -> list[str]:
    """``count`` loopback addresses of a random 127.x.y.0/24, like pod IPs: the reviews
    sidecars share one config (same ports) and differ by address only."""
    for _ in range(20):
        base = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
        hosts = [f"{base}.{i + 1}" for i in range(count)]
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, 0))
        except OSError:
            continue
        return hosts
    raise OSError("no free 127.x.y.0/24 loopback range to give the reviews pods addresses")


@dataclass
class Layout:
    control_port: int = field(default_factory=testing.free_port)
    pp_app: int = field(default_factory=testing.free_port)
    pp_inbound: int = field(default_factory=testing.free_port)
    pp_outbound: int = field(default_factory=testing.free_port)
    pp_admin: int = field(default_factory=testing.free_port)
    reviews_app: int = field(default_factory=testing.free_port)
    reviews_inbound: int = field(default_factory=testing.free_port)
    reviews_admin: int = field(default_factory=testing.free_port)
    ratings_app: int = field(default_factory=testing.free_port)
    ratings_inbound: int = field(default_factory=testing.free_port)
    ratings_admin: int = field(default_factory=testing.free_port)
    instances: list[Instance] = field(default_factory=list)
    #: The pod the demo adds while traffic flows, and later stops.
    extra: Instance = field(default_factory=lambda: Instance("", "", ""))
    #: The one ratings pod (the gRPC service).
    ratings: Instance = field(default_factory=lambda: Instance("", "", ""))

    def __post_init__(self) -> None:
        if not self.instances:
            hosts = _pod_hosts(5)
            self.instances = [Instance("reviews-v1-a", "v1", hosts[0]),
                              Instance("reviews-v1-b", "v1", hosts[1]),
                              Instance("reviews-v2", "v2", hosts[2])]
            self.extra = Instance("reviews-v1-c", "v1", hosts[3])
            self.ratings = Instance("ratings-v1", "v1", hosts[4])

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def pp_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.pp_admin}"

    @property
    def ratings_admin_url(self) -> str:
        return f"http://{self.ratings.host}:{self.ratings_admin}"

    @property
    def ratings_target(self) -> str:
        """The ratings app's own gRPC address (its sidecar's ``local`` cluster)."""
        return f"{self.ratings.host}:{self.ratings_app}"

    @property
    def pp_outbound_target(self) -> str:
        """productpage's sidecar's outbound listener, as a gRPC client names it."""
        return f"127.0.0.1:{self.pp_outbound}"

    @property
    def entry_url(self) -> str:
        """Where the demo's client sends traffic: productpage's inbound listener."""
        return f"http://127.0.0.1:{self.pp_inbound}"

    def admin_url(self, instance: Instance) -> str:
        return f"http://{instance.host}:{self.reviews_admin}"

    def app_url(self, instance: Instance) -> str:
        return f"http://{instance.host}:{self.reviews_app}"

    def endpoint(self, instance: Instance) -> str:
        """The address productpage's sidecar sends to: the pod's inbound listener."""
        return f"{instance.host}:{self.reviews_inbound}"

    @property
    def ratings_endpoint(self) -> str:
        return f"{self.ratings.host}:{self.ratings_inbound}"

    def instance_at(self, address: str) -> Instance | None:
        return next((i for i in self.instances if self.endpoint(i) == address), None)


def _tracing(zipkin_url: str, service: str) -> dict[str, Any]:
    return {"name": "tracing", "config": {
        "service_name": service,
        "zipkin": {"endpoint": zipkin_url, "batch_size": 50, "flush_interval": "200ms"}}}


def _node(service: str) -> dict[str, str]:
    return {"service": service, "namespace": NAMESPACE, "trust_domain": TRUST_DOMAIN}


def reviews_config(layout: Layout, zipkin_url: str) -> dict[str, Any]:
    """One config for every reviews pod: ``--bind-host`` moves it onto the pod's address
    (listeners, admin and the ``localhost`` app)."""
    return {
        "node": _node("reviews"),
        "admin": f"127.0.0.1:{layout.reviews_admin}",
        "clusters": [{"name": "local", "connect_timeout": "1s",
                      "endpoints": [{"address": f"localhost:{layout.reviews_app}"}]}],
        "listeners": [{
            "name": "inbound",
            "address": f"127.0.0.1:{layout.reviews_inbound}",
            "plugins": [
                {"name": "mtls", "config": {"mode": "strict",
                                            "allow": [spiffe_id("productpage")]}},
                _tracing(zipkin_url, "reviews"),
            ],
            "routes": [{"name": "local", "match": {"prefix": "/"}, "cluster": "local"}],
        }],
    }


def ratings_config(layout: Layout, zipkin_url: str) -> dict[str, Any]:
    """The ratings pod's sidecar: mTLS in (ALPN h2), HTTP/2 without TLS (h2c) to its
    gRPC app, which speaks nothing else."""
    return {
        "node": _node("ratings"),
        "admin": f"127.0.0.1:{layout.ratings_admin}",
        "clusters": [{"name": "local", "connect_timeout": "1s", "protocol": "http2",
                      "endpoints": [{"address": f"localhost:{layout.ratings_app}"}]}],
        "listeners": [{
            "name": "inbound",
            "address": f"127.0.0.1:{layout.ratings_inbound}",
            "plugins": [
                {"name": "mtls", "config": {"mode": "strict",
                                            "allow": [spiffe_id("productpage")]}},
                _tracing(zipkin_url, "ratings"),
            ],
            "routes": [{"name": "local", "match": {"prefix": "/"}, "cluster": "local"}],
        }],
    }


def productpage_config(layout: Layout, zipkin_url: str, policy: bool) -> dict[str, Any]:
    """productpage's sidecar, calling ``service: reviews`` (found by discovery, no address
    written down; ``local``, its own app, stays static as Istio's inbound cluster does);
    ``policy`` adds retry, outlier detection and the split to
    the reviews route (mTLS is there from the start)."""
    chain: list[dict[str, Any]] = [{"name": "mtls", "config": {"expect": spiffe_id("reviews")}}]
    if policy:
        chain = [{"name": "retry", "config": RETRY}, {"name": "circuit", "config": CIRCUIT},
                 {"name": "split", "config": SPLIT}, *chain]
    return {
        "node": _node("productpage"),
        "admin": f"127.0.0.1:{layout.pp_admin}",
        "clusters": [
            # Its endpoints are the live reviews pods, as they register (--label version=).
            {"name": "reviews", "connect_timeout": "1s", "load_balancer": "round_robin",
             "service": "reviews",
             "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                         {"name": "v2", "labels": {"version": "v2"}}]},
            # gRPC needs HTTP/2 to the next sidecar too: ALPN h2 over the mTLS hop.
            {"name": "ratings", "connect_timeout": "1s", "service": "ratings",
             "protocol": "http2"},
            {"name": "local", "connect_timeout": "1s",
             "endpoints": [{"address": f"127.0.0.1:{layout.pp_app}"}]},
        ],
        "listeners": [
            {"name": "inbound", "address": f"127.0.0.1:{layout.pp_inbound}",
             "plugins": [_tracing(zipkin_url, "productpage")],
             "routes": [{"name": "productpage", "match": {"prefix": "/"},
                         "cluster": "local"}]},
            {"name": "outbound", "address": f"127.0.0.1:{layout.pp_outbound}",
             "plugins": [_tracing(zipkin_url, "productpage")],
             "routes": [{"name": "reviews", "match": {"host": "reviews", "prefix": "/"},
                         "cluster": "reviews", "timeout": "3s", "plugins": chain},
                        {"name": "ratings",
                         "match": {"host": "ratings", "prefix": "/bookinfo.Ratings/"},
                         "cluster": "ratings", "timeout": "3s", "plugins": [
                             {"name": "mtls", "config": {"expect": spiffe_id("ratings")}}]}]},
        ],
    }
