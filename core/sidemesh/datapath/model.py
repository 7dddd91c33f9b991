"""The typed, validated sidecar config: what ``config.py`` produces from YAML.

Everything here is immutable and already checked; the data path compiles it further
(``routing.py``, ``chain.py``) when a snapshot is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AccessLogConfig",
    "ChainEntry",
    "ClusterConfig",
    "ConnectionLimits",
    "ControlConfig",
    "EndpointConfig",
    "HeaderMatch",
    "Http2Settings",
    "ListenerConfig",
    "NodeConfig",
    "PathNormalization",
    "RouteConfig",
    "RouteMatch",
    "SidecarConfig",
    "SubsetConfig",
    "TelemetryConfig",
]

LoadBalancer = Literal["round_robin", "least_request", "random"]
UpstreamProtocol = Literal["http1", "http2", "auto"]


@dataclass(frozen=True)
class NodeConfig:
    service: str
    namespace: str = "default"
    trust_domain: str = "cluster.local"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"


@dataclass(frozen=True)
class EndpointConfig:
    address: str
    host: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubsetConfig:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    endpoints: tuple[EndpointConfig, ...]
    subsets: tuple[SubsetConfig, ...] = ()
    connect_timeout: float = 1.0
    load_balancer: LoadBalancer = "round_robin"
    protocol: UpstreamProtocol = "http1"


@dataclass(frozen=True)
class ChainEntry:
    """One ``{name, config, version, enabled}`` entry, its config validated and with the
    plugin schema's defaults filled in. ``scope`` says which list it came from."""

    name: str
    config: dict[str, Any]
    scope: Literal["listener", "route"]
    version: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    kind: Literal["exact", "prefix", "regex", "present"]
    value: str | bool


@dataclass(frozen=True)
class RouteMatch:
    host: str | None = None
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    methods: tuple[str, ...] = ()
    #: the connection's original destination (``use_original_dst`` listeners):
    #: ``host:port``, or a bare host for any port.
    destination: str | None = None
    destination_port: int | None = None


@dataclass(frozen=True)
class RouteConfig:
    name: str
    match: RouteMatch
    cluster: str
    timeout: float | None = 15.0
    #: the effective chain: listener entries first, overridden by route entries of the
    #: same name, then the route's own entries, in YAML order; disabled ones removed.
    chain: tuple[ChainEntry, ...] = ()
    #: Upgrade protocols tunnelled after a 101 (lower case); others are stripped.
    upgrades: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PathNormalization:
    normalize: bool = True
    merge_slashes: bool = True
    escaped_slashes: Literal["reject", "keep", "unescape"] = "reject"


@dataclass(frozen=True)
class ConnectionLimits:
    """A listener's connection hygiene; ``None`` (or 0 s) means no limit."""

    request_headers_timeout: float | None = 10.0
    idle_timeout: float | None = 3600.0
    max_connections: int | None = None
    max_requests_per_connection: int | None = None


@dataclass(frozen=True)
class Http2Settings:
    """A listener's HTTP/2 settings, with Envoy's defaults."""

    max_concurrent_streams: int = 2147483647
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    max_header_list_size: int = 61440


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    address: str
    host: str
    port: int
    routes: tuple[RouteConfig, ...]
    #: the listener's own chain (for connection setup when the listener starts).
    chain: tuple[ChainEntry, ...] = ()
    paths: PathNormalization = PathNormalization()
    limits: ConnectionLimits = ConnectionLimits()
    #: accepts connections iptables redirected to it and routes by where they were going.
    use_original_dst: bool = False
    http2: Http2Settings = Http2Settings()


@dataclass(frozen=True)
class ControlConfig:
    url: str
    token_file: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class TelemetryConfig:
    """Which request metrics ``/metrics`` shows: sidemesh's own or Istio's standard ones."""

    metrics: Literal["sidemesh", "istio"] = "sidemesh"
    #: listeners whose requests Istio's metrics report as the server's
    #: (``reporter="destination"``); the others report as the client's.
    inbound_listeners: tuple[str, ...] = ("inbound",)


@dataclass(frozen=True)
class AccessLogConfig:
    """The shape of access-log lines: an Envoy ``format`` string or ``json_format``
    object of command operators; neither is sidemesh's own JSON line."""

    format: str | None = None
    json_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class SidecarConfig:
    node: NodeConfig
    clusters: tuple[ClusterConfig, ...]
    listeners: tuple[ListenerConfig, ...]
    admin: str | None = None
    control: ControlConfig | None = None
    telemetry: TelemetryConfig = TelemetryConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    #: the document as written (after YAML parsing), for ``/config_dump``.
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def cluster(self, name: str) -> ClusterConfig:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)
