"""``sidemesh proxy --control URL[,URL...]``: a sidecar that takes its config from the
control plane.

It long-polls ``/v1/services/{service}/watch``, applies each new version atomically
(a config the local plugins cannot run is NACKed and the running one stays), reports
ACK/NACK with its installed plugin versions, and keeps the last applied config on disk
so a restart while the control plane is down still serves. The control plane is never
in the data path: when it is unreachable the sidecar keeps serving and reconnects with
jittered exponential back-off. With several replicas it uses one at a time and moves to
the next (round-robin) when the one in use fails to answer: a connection error, a
timeout or a ``5xx``; any other answer (a ``401``, a ``403``) is the control plane's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
from pathlib import Path
from typing import Any

import httpx

from sidemesh.api.policy import ControlPlane
from sidemesh.config.build import control_urls
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import ConfigInvalid, build
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.datapath.sidecar import ApplyError
from sidemesh.process.discovery import (
    Registrar,
    cluster_endpoints,
    service_clusters,
    with_endpoints,
)
from sidemesh.process.endpoints import EndpointServer
from sidemesh.process.lifecycle import (
    install_signals,
    log_ready,
    new_served,
    shut_down,
    start_admin,
)
from sidemesh.process.sidecar import control_plane, read_token
from sidemesh.process.state_cache import StateCache
from sidemesh.process.status import start_status, status_target
from sidemesh.process.workers import Served

__all__ = ["WATCH_TIMEOUT", "Agent", "Backoff", "StateCache", "rebind", "run_agent"]

log = logging.getLogger("sidemesh")

#: Seconds the control plane holds a watch before answering 304.
WATCH_TIMEOUT = 25.0


class Backoff:
    """Exponential back-off with jitter: half the delay fixed, half random, so many
    sidecars reconnecting at once spread out but none waits longer than ``cap``."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2 ** self.attempt)
        self.attempt += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.attempt = 0


def rebind(doc: dict[str, Any], host: str) -> dict[str, Any]:
    """``doc`` with every listener, the admin API and every ``localhost:PORT`` endpoint on
    ``host`` (ports unchanged)."""
    shown = f"[{host}]" if ":" in host else host

    def moved(address: Any) -> Any:
        if not isinstance(address, str) or ":" not in address:
            return address
        return f"{shown}:{address.rpartition(':')[2]}"

    out = json.loads(json.dumps(doc))
    if "admin" in out:
        out["admin"] = moved(out["admin"])
    for listener in out.get("listeners") or []:
        if isinstance(listener, dict) and "address" in listener:
            listener["address"] = moved(listener["address"])
    # `localhost` is the pod's own loopback (its local app), so it moves with the pod;
    # numeric addresses stay, they may name a service shared by every sidecar.
    for cluster in out.get("clusters") or []:
        for endpoint in (cluster.get("endpoints") or []) if isinstance(cluster, dict) else []:
            address = endpoint.get("address") if isinstance(endpoint, dict) else None
            if isinstance(address, str) and address.rpartition(":")[0] == "localhost":
                endpoint["address"] = moved(address)
    return out


class Agent:
    """Follows one service's config on the control plane and applies it to ``sidecar``."""

    def __init__(
        self,
        sidecar: Served,
        registry: PluginRegistry,
        client: httpx.AsyncClient,
        plane: ControlPlane,
        service: str,
        proxy_id: str,
        cache: StateCache,
        bind_host: str | None = None,
    ) -> None:
        self.sidecar = sidecar
        self.registry = registry
        self.client = client
        self.plane = plane
        self.service = service
        self.proxy_id = proxy_id
        self.cache = cache
        self.bind_host = bind_host
        self.applied: int | None = None
        self.seen: int = 0
        self.nacked: dict[int, str] = {}
        self.admin: EndpointServer | None = None
        self.admin_address: str | None = None
        self.pending: dict[str, Any] | None = None
        self.tried_cache = False
        #: the control plane's endpoints of the services the config's clusters name,
        #: their version, and which clusters of the applied config discover which service.
        self.endpoints: dict[str, Any] = {}
        self.endpoints_version = ""
        self.discovered: dict[str, str] = {}
        #: replicas that failed to answer since one last did.
        self.failed: set[str] = set()

    @property
    def control(self) -> str:
        """The replica in use."""
        return self.plane.url

    @property
    def replicas(self) -> str:
        return ", ".join(self.plane.urls)

    @property
    def plugins(self) -> list[dict[str, str]]:
        return [{"name": p.name, "version": p.version, "distribution": p.distribution}
                for p in self.registry.all()]

    # applying ------------------------------------------------------------------------
    async def apply(self, version: int, doc: dict[str, Any]) -> str | None:
        """Apply ``doc`` as ``version``; the reason it was refused, or ``None``."""
        local = rebind(doc, self.bind_host) if self.bind_host else doc
        try:
            config = with_endpoints(build(local, self.registry), local, self.endpoints)
        except ConfigInvalid as exc:
            return "; ".join(str(e) for e in exc.errors)
        new_admin: EndpointServer | None = None
        if config.admin and config.admin != self.admin_address:
            try:
                new_admin = await start_admin(self.sidecar, self.registry, config.admin)
            except OSError as exc:
                return str(exc)
        try:
            await self.sidecar.apply(config, str(version), f"control:{self.control}")
        except ApplyError as exc:
            if new_admin is not None:
                await new_admin.stop()
            return str(exc)
        if config.admin != self.admin_address:
            if self.admin is not None:
                await self.admin.stop()
            self.admin, self.admin_address = new_admin, config.admin
        if self.applied is None:
            log_ready(self.sidecar, self.service, self.admin, self.admin_address)
        self.applied = version
        self.discovered = service_clusters(local)
        return None

    async def handle(self, version: int, doc: dict[str, Any]) -> None:
        """A version from the control plane: apply it once, report, remember."""
        self.seen = version
        if version in self.nacked or version == self.applied:
            return
        reason = await self.apply(version, doc)
        if reason is None:
            log.info("config %s of %s applied (ACK)", version, self.service)
            try:
                await asyncio.to_thread(self.cache.save, version, doc, self.control,
                                        self.endpoints)
            except OSError as exc:
                log.warning("cannot save the applied config to %s: %s", self.cache.path, exc)
            await self.report("ACK", version, None)
        else:
            # Remembered so a NACKed version is never retried in a loop.
            self.nacked[version] = reason
            log.error("config %s of %s rejected (NACK), keeping %s: %s", version,
                      self.service, self.applied if self.applied is not None else "nothing",
                      reason)
            await self.report("NACK", version, reason)

    async def start_from_cache(self) -> None:
        saved = self.cache.load()
        if saved is None:
            log.warning("control plane %s unreachable and no saved config in %s: waiting",
                        self.replicas, self.cache.path)
            return
        version, doc, self.endpoints = saved
        reason = await self.apply(version, doc)
        if reason is None:
            log.info("control plane %s unreachable: serving saved config %s from %s",
                     self.replicas, version, self.cache.path)
            self.seen = version
        else:
            log.error("the saved config %s in %s cannot be applied: %s", version,
                      self.cache.path, reason)

    # talking to the control plane ----------------------------------------------------
    async def report(self, state: str, version: int, error: str | None) -> None:
        self.pending = {"service": self.service, "state": state, "version": version,
                        "applied_version": self.applied, "error": error,
                        "plugins": self.plugins}
        await self.flush_report()

    async def flush_report(self) -> None:
        if self.pending is None:
            return
        used = self.control
        try:
            response = await self.client.post(f"{used}/v1/proxies/{self.proxy_id}/status",
                                              json=self.pending)
        except httpx.HTTPError as exc:
            log.warning("cannot report status to %s (will retry): %s", used, exc)
            self._failed(used, type(exc).__name__)
            return
        if response.status_code == 200:
            self.pending = None
            return
        log.warning("status report refused by %s: %s %s", used, response.status_code,
                    response.text[:200])
        if response.status_code >= 500:
            self._failed(used, f"HTTP {response.status_code}")

    def _failed(self, url: str, reason: str) -> None:
        """``url`` did not answer: the next replica is used from now on. Said once per
        replica until one answers, so a long outage does not fill the log."""
        first = url not in self.failed
        self.failed.add(url)
        following = self.plane.fail_over(url)
        if not first:
            return
        if len(self.failed) >= len(self.plane.urls):
            log.warning("control plane %s unreachable (%s): keeping config %s, retrying",
                        self.replicas, reason,
                        self.applied if self.applied is not None else "-")
        elif following != url:
            log.warning("control plane %s unreachable (%s): trying %s", url, reason,
                        following)

    async def follow(self) -> None:
        """Watch forever; never raises (except cancellation)."""
        backoff = Backoff()
        connected = False
        while True:
            used = self.control
            try:
                response = await self.client.get(
                    f"{used}/v1/services/{self.service}/watch",
                    params={"after": self.seen, "timeout": WATCH_TIMEOUT,
                            "proxy": self.proxy_id,
                            "endpoints_version": self.endpoints_version})
            except httpx.HTTPError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    # Never connected to: it may be a man in the middle. Said every time.
                    log.error("control plane %s presented a certificate that --control-ca "
                              "does not trust, refusing to connect: %s", used, exc)
                connected = False
                self._failed(used, type(exc).__name__)
                await self._fallback()
                await asyncio.sleep(backoff.next())
                continue
            if response.status_code in (200, 304):
                if not connected:
                    log.info("connected to control plane %s", used)
                connected = True
                self.failed.clear()
                backoff.reset()
                await self.flush_report()
                if response.status_code == 200:
                    await self._received(response)
                continue
            log.error("control plane %s answered %s: %s", used, response.status_code,
                      response.text[:300])
            if response.status_code >= 500:
                connected = False
                self._failed(used, f"HTTP {response.status_code}")
            else:
                self.failed.clear()  # an answer (a 401, a 403): this replica is up
            await self._fallback()
            await asyncio.sleep(backoff.next())

    async def _fallback(self) -> None:
        """Nothing applied and no config from the control plane (no replica answers, or
        one refuses): use the saved one."""
        if 0 < len(self.failed) < len(self.plane.urls):
            return  # another replica is yet to be tried
        if self.applied is None and not self.tried_cache:
            self.tried_cache = True
            await self.start_from_cache()

    async def _received(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            version, doc = int(body["version"]), body["config"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable answer from the control plane: %s", exc)
            await asyncio.sleep(1)
            return
        if not isinstance(doc, dict):
            log.error("the control plane sent a config that is not an object")
            return
        endpoints_version = str(body.get("endpoints_version") or "")
        fresh = endpoints_version != self.endpoints_version
        self.endpoints = body.get("endpoints") or {}
        self.endpoints_version = endpoints_version
        before = self.applied
        await self.handle(version, doc)
        if fresh and self.applied == before and self.discovered:
            # Same config (or a NACKed one): only the endpoints change, in place (EDS).
            updated = self.sidecar.update_endpoints(
                cluster_endpoints(self.discovered, self.endpoints))
            log.info("endpoints %s of %s: clusters %s updated", endpoints_version,
                     self.service, ", ".join(updated) or "none")
            try:
                await asyncio.to_thread(self.cache.save_endpoints, self.endpoints,
                                        self.control)
            except OSError as exc:
                log.warning("cannot save the endpoints to %s: %s", self.cache.path, exc)


def _state_dir(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "state_dir", None) or os.environ.get("SIDEMESH_STATE_DIR")
    return Path(chosen or "~/.sidemesh").expanduser()


def _default_proxy_id(service: str) -> str:
    raw = f"{service}-{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[:128]


async def run_agent(
    args: argparse.Namespace, registry: PluginRegistry, access_log: AccessLog, drain: float
) -> int:
    token_file = getattr(args, "token_file", None)
    try:
        token = read_token(token_file)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        urls = control_urls(str(args.control))
    except ValueError as exc:
        log.error("--control: %s", exc)
        return 2
    service = str(args.service)
    state_dir = _state_dir(args)
    plane = control_plane(urls, token_file, getattr(args, "control_ca", None))
    try:
        verify = plane.verify()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        log.error("--control-ca %s: %s", plane.ca_file, exc)
        return 2
    try:
        sidecar = await new_served(args, registry, access_log, drain, plane, token_file)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    try:  # up before any config: kubelet's probe gets 503, not a refused connection
        status = await start_status(sidecar, *status_target(args))
    except OSError as exc:
        log.error("%s", exc)
        await sidecar.drain(0)
        return 1
    timeout = httpx.Timeout(5.0, read=WATCH_TIMEOUT + 10.0)
    async with httpx.AsyncClient(timeout=timeout, verify=verify,
                                 headers={"authorization": f"Bearer {token}"}) as client:
        agent = Agent(sidecar, registry, client, plane, service,
                      getattr(args, "proxy_id", None) or _default_proxy_id(service),
                      StateCache(state_dir, service), getattr(args, "bind_host", None))
        stop = asyncio.Event()
        install_signals(stop, lambda: log.info(
            "SIGHUP ignored: the config comes from the control plane %s", agent.control))
        log.info("sidecar %s (%s) following %s", service, agent.proxy_id, agent.replicas)
        follower = asyncio.create_task(agent.follow())
        registrar = Registrar(sidecar, client, plane, service, agent.proxy_id,
                              dict(getattr(args, "label", None) or []),
                              getattr(args, "register_listener", "inbound"),
                              getattr(args, "register_ttl", 10.0))
        registrar.start()
        await stop.wait()
        # Deregistered first: callers stop sending here before the listener closes.
        await registrar.stop(min(getattr(args, "deregister_grace", 1.0), drain))
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    await shut_down(sidecar, agent.admin, drain, status)
    return 0
