"""A running sidecar: the applied snapshot, its listeners, and config swaps."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from sidemesh.datapath.accesslog import SIDEMESH_JSON, AccessLog, LineFormat
from sidemesh.datapath.body import RequestBody
from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.downstream import DownstreamConnection
from sidemesh.datapath.exchange import ClientSide
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.forward import Forwarder
from sidemesh.datapath.hygiene import Sweeper
from sidemesh.datapath.listener import ListenerServer
from sidemesh.datapath.logformat import compile_log_format
from sidemesh.datapath.messages import Headers, Request
from sidemesh.datapath.metrics import Metrics
from sidemesh.datapath.model import EndpointConfig, SidecarConfig
from sidemesh.datapath.outcome import Outcome
from sidemesh.datapath.snapshot import Snapshot
from sidemesh.datapath.tls_bridge import handshake_failure

__all__ = ["ApplyError", "Sidecar", "SnapshotBuilder"]

#: (config, version, source, previous snapshot) -> the new snapshot; raises when the
#: config cannot be compiled (a policy that fails to start).
SnapshotBuilder = Callable[[SidecarConfig, str, str, "Snapshot | None"], Snapshot]

log = logging.getLogger("sidemesh")
#: every listener serves HTTP/2 and HTTP/1.1; TLS clients choose by ALPN.
LISTENER_ALPN = ("h2", "http/1.1")


class ApplyError(Exception):
    """A config passed validation but could not be applied (a port in use, a policy that
    failed to start). The previous config keeps running."""


class Sidecar:
    """Owns listeners and the current :class:`Snapshot`; swaps snapshots atomically."""

    def __init__(
        self,
        build: SnapshotBuilder,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        on_applied: Callable[[SidecarConfig, str, str], None] | None = None,
    ) -> None:
        self._build = build
        self._on_applied = on_applied
        self.access_log = access_log or AccessLog(None)
        #: the applied config's access-log format (compiled once per config).
        self.log_format: LineFormat = SIDEMESH_JSON
        self.metrics = metrics or _shared_metrics()
        self.snapshot: Snapshot | None = None
        self.servers: dict[str, ListenerServer] = {}
        self.connections: set[DownstreamConnection] = set()
        #: open client connections by listener, for its ``max_connections``.
        self._open: dict[str, int] = {}
        self._sweeper = Sweeper(self.connections)
        self.forwarder = Forwarder(self._done)
        self.active = 0
        self.draining = False
        self._idle: asyncio.Event | None = None
        self._retired: list[Snapshot] = []
        self._apply_lock = asyncio.Lock()
        #: bind listeners with SO_REUSEPORT (a worker of ``--concurrency N``).
        self.reuse_port = False

    # config ------------------------------------------------------------------------
    def waiting_for(self) -> str | None:
        """Why the sidecar cannot serve yet, or ``None`` when it can: no config applied,
        a listener not bound, or a policy waiting (for its certificate)."""
        snapshot = self.snapshot
        if snapshot is None:
            return "no config applied yet"
        for name, listener in snapshot.listeners.items():
            if name not in self.servers:
                return f"listener {name} is not listening"
            reason = listener.chain.waiting_for()
            for route in listener.routes:
                reason = reason or route.chain.waiting_for()
            if reason is not None:
                return f"listener {name}: {reason}"
        return None

    async def apply(self, config: SidecarConfig, version: str, source: str) -> None:
        """Build the new snapshot, (re)start the listeners it needs, then swap. On any
        failure the previous snapshot and listeners stay as they were."""
        async with self._apply_lock:
            try:
                snapshot = self._build(config, version, source, self.snapshot)
                log_format = compile_log_format(config.access_log)
            except Exception as exc:
                self.metrics.config_applies.labels("rejected").inc()
                raise ApplyError(f"cannot apply config {version}: {exc}") from exc
            try:
                await self._swap_listeners(snapshot)
            except Exception as exc:
                self.metrics.config_applies.labels("rejected").inc()
                await snapshot.close()
                raise ApplyError(f"cannot apply config {version}: {exc}") from exc
            previous, self.snapshot = self.snapshot, snapshot
            self.log_format = log_format
            self.metrics.config_applies.labels("ok").inc()
            self.metrics.set_config(version, source, snapshot)
            if previous is not None:
                self._retired.append(previous)
                self._close_retired()
            if self._on_applied is not None:
                self._on_applied(config, version, source)
            log.info("config %s applied from %s", version, source)

    def update_endpoints(self, clusters: dict[str, tuple[EndpointConfig, ...]]) -> list[str]:
        """Replace the endpoints of the running config's clusters named in ``clusters``
        (an endpoint discovery update, Envoy's EDS): listeners, routes and policies stay
        as they are, and an endpoint that stays keeps its state; requests in flight to
        one that left finish (it drains). Returns the clusters updated."""
        snapshot = self.snapshot
        if snapshot is None:
            return []
        updated: list[str] = []
        for name, endpoints in clusters.items():
            cluster = snapshot.clusters.get(name)
            if cluster is None:
                continue
            cluster.set_endpoints(replace(cluster.config, endpoints=endpoints),
                                  cluster.endpoints)
            updated.append(name)
        return updated

    async def _swap_listeners(self, snapshot: Snapshot) -> None:
        wanted: dict[str, ListenerServer] = {}
        for name, listener in snapshot.listeners.items():
            cfg = listener.config
            setup = listener.chain.connection_setup(
                ConnectionSetup("listener", name, alpn_protocols=LISTENER_ALPN)
            )
            port = cfg.port
            current = self.servers.get(name)
            if port == 0 and current is not None and current.host == cfg.host:
                port = current.port  # "any port" keeps the one already bound
            wanted[name] = ListenerServer(name, cfg.host, port, self._factory(name), setup,
                                          self.reuse_port, self._tls_failed(name))
        started: list[ListenerServer] = []
        stopped: list[ListenerServer] = []
        try:
            for name, server in wanted.items():
                current = self.servers.get(name)
                if (
                    current is not None
                    and current.key == server.key
                    and (current.setup.ssl_context is server.setup.ssl_context)
                ):
                    wanted[name] = current
                    continue
                # A listener moved or changed TLS: free its old socket before binding
                # (the same port is usually reused).
                for old in self.servers.values():
                    if old.host == server.host and old.port == server.port and old not in stopped:
                        old.stop_accepting()
                        stopped.append(old)
                await server.start()
                started.append(server)
        except Exception:
            for server in started:
                server.stop_accepting()
            for old in stopped:
                await old.start()
            raise
        replaced = set()
        for name, server in self.servers.items():
            if wanted.get(name) is not server:
                replaced.add(name)
                if server not in stopped:
                    server.stop_accepting()
        self.servers = wanted
        for conn in list(self.connections):
            if conn.listener in replaced:
                # Clients of a listener that moved or went away reconnect (an HTTP/2
                # client on GOAWAY; an HTTP/1.1 one when its connection closes).
                conn.stop_serving()

    def _close_retired(self) -> None:
        for snapshot in list(self._retired):
            if snapshot.active == 0:
                self._retired.remove(snapshot)
                asyncio.get_running_loop().create_task(snapshot.close())

    def _tls_failed(self, listener: str) -> Callable[[BaseException | None], None]:
        def count(exc: BaseException | None) -> None:
            self.metrics.tls_handshake_failures.labels(listener, handshake_failure(exc)).inc()

        return count

    def _factory(self, listener: str) -> Callable[[], DownstreamConnection]:
        def closed(conn: DownstreamConnection) -> None:
            if conn in self.connections:
                self.connections.discard(conn)
                self._open[listener] -= 1

        def make() -> DownstreamConnection:
            snapshot = self.snapshot
            compiled = snapshot.listeners.get(listener) if snapshot is not None else None
            if compiled is None:
                conn = DownstreamConnection(self.handle, listener, "http", closed)
            else:
                config = compiled.config
                conn = DownstreamConnection(
                    self.handle, listener, "http", closed, config.paths, config.limits
                )
                conn.wants_original_dst = config.use_original_dst
                conn.http2 = config.http2
                cap = config.limits.max_connections or default_max_connections()
                if self._open.get(listener, 0) >= cap:
                    # Envoy's overload answer: the connection is closed as it arrives.
                    conn.refused = True
                    self.metrics.downstream_overflow.labels(listener).inc()
                    return conn
            conn.on_rejected = self._rejected
            conn.wants_local_address = self.log_format.local_address
            self.connections.add(conn)
            self._open[listener] = self._open.get(listener, 0) + 1
            self._sweeper.watch(asyncio.get_running_loop())
            return conn

        return make

    # requests ----------------------------------------------------------------------
    def handle(
        self, conn: ClientSide, request: Request, body: RequestBody
    ) -> Coroutine[Any, Any, None]:
        """Route the request on the current snapshot and return the coroutine that
        forwards it (a plain function: one coroutine level less per request; the
        counters taken here are given back in :meth:`_done`)."""
        snapshot = self.snapshot
        assert snapshot is not None
        listener = snapshot.listeners.get(conn.listener)
        route = None
        if listener is not None:
            index = listener.table.match(
                request.method,
                request.host,
                request.path_only,
                request.headers,
                conn.info.original_destination,
            )
            if index is not None:
                route = listener.routes[index]
        if self.draining:
            conn.keep_alive = False
        snapshot.active += 1
        self.active += 1
        return self.forwarder.handle(conn, request, body, snapshot, route)

    def _done(self, request: Request, outcome: Outcome, snapshot: Snapshot) -> None:
        snapshot.active -= 1
        self.active -= 1
        if snapshot is not self.snapshot and snapshot.active == 0:
            self._close_retired()
        if self.active == 0 and self._idle is not None:
            self._idle.set()
        duration = time.monotonic() - request.start
        self.metrics.observe_request(request, outcome, duration)
        if self.access_log.enabled:
            outcome.duration = duration
            self.access_log.record(self.log_format, request, outcome)

    def _rejected(self, conn: ClientSide, status: int, message: str) -> None:
        """A request refused before routing (malformed, too large, a bad path): logged and
        counted with flag ``DPE``, as Envoy logs a downstream protocol error."""
        flags = [ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR]
        self.metrics.observe(conn.listener, "", "", status, 0.0, flags, 0)
        if self.access_log.enabled:
            # In the same format as every other line: log pipelines expect one shape. The
            # request never parsed, so its method, path, host and protocol are not set.
            request = Request("", "", "", Headers(), conn.info, conn.listener, version="")
            request.log["error"] = message
            outcome = Outcome()
            outcome.status = status
            outcome.flags.extend(flags)
            outcome.bytes_sent = conn.bytes_sent
            self.access_log.record(self.log_format, request, outcome)

    # shutdown ----------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let in-flight requests finish (up to ``timeout`` seconds),
        then close every connection. Returns whether everything finished in time."""
        self.draining = True
        for server in self.servers.values():
            server.stop_accepting()
        for conn in list(self.connections):
            conn.stop_serving()
        finished = True
        if self.active:
            self._idle = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                finished = False
        for conn in list(self.connections):
            conn.close()
        self._sweeper.stop()
        snapshots = [*self._retired, *([self.snapshot] if self.snapshot else [])]
        for snapshot in snapshots:
            for cluster in snapshot.clusters.values():
                for endpoint in cluster.endpoints:
                    for pool in endpoint.pools.values():
                        pool.close()
            await snapshot.close()
        self.access_log.flush()
        return finished


_METRICS: Metrics | None = None
#: client connections the open-file limit leaves room for, when a listener sets none.
_DEFAULT_MAX: int | None = None


def default_max_connections() -> int:
    """Half of what the process's open-file limit leaves after 64 (for the admin API,
    logs and the like): each client connection may need an upstream one."""
    global _DEFAULT_MAX
    if _DEFAULT_MAX is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        _DEFAULT_MAX = max(1, (soft - 64) // 2) if soft != resource.RLIM_INFINITY else 1 << 20
    return _DEFAULT_MAX


def _shared_metrics() -> Metrics:
    # prometheus-client families are process-wide: every sidecar in a process (tests run
    # several) shares one set.
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics()
    return _METRICS
