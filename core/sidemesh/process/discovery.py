"""The sidecar's side of service discovery: it registers its own instance with the
control plane (and heartbeats it, and deregisters it before draining), and it sets the
endpoints of its ``service:`` clusters from what the control plane pushes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sidemesh.api.durations import duration_argument
from sidemesh.api.policy import ControlPlane
from sidemesh.config.build import split_address
from sidemesh.datapath.model import EndpointConfig, SidecarConfig
from sidemesh.datapath.sidecar import Sidecar

if TYPE_CHECKING:
    # httpx (~6 MB) loads with the control-plane client that a Registrar is given, never
    # in file mode, which imports this module for its command-line options.
    import httpx

    from sidemesh.process.workers import WorkerGroup

__all__ = ["DEFAULT_LISTENER", "Registrar", "cluster_endpoints", "registration_arguments",
           "service_clusters", "with_endpoints"]

log = logging.getLogger("sidemesh")

#: The listener registered as the instance's address unless --register-listener says.
DEFAULT_LISTENER = "inbound"
_WILDCARDS = ("", "0.0.0.0", "::")


def registration_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sidemesh proxy`` options of service registration (with --control)."""
    def label(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
        return key, value

    p.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE",
                   help="with --control: a label of this instance in the service registry, "
                   "e.g. version=v2, for subsets and splits of `service:` clusters "
                   "(repeatable; Kubernetes pod labels)")
    p.add_argument("--register-listener", default=DEFAULT_LISTENER, metavar="NAME",
                   help="with --control: the listener whose address is registered as this "
                   f"instance's (default {DEFAULT_LISTENER}; none of that name: not "
                   "registered)")
    p.add_argument("--register-ttl", type=duration_argument, default=10.0, metavar="DURATION",
                   help="with --control: the registration is dropped this long after the "
                   "last heartbeat (sent every third of it; default 10s)")
    p.add_argument("--deregister-grace", type=duration_argument, default=1.0,
                   metavar="DURATION", help="on SIGTERM, keep serving this long after "
                   "deregistering, so callers get the update before the listener closes "
                   "(default 1s)")


# endpoints ---------------------------------------------------------------------------
def service_clusters(doc: dict[str, Any]) -> dict[str, str]:
    """Cluster name -> the service it discovers, for a config's ``service:`` clusters."""
    clusters = doc.get("clusters")
    return {c["name"]: c["service"] for c in clusters if isinstance(c, dict)
            and isinstance(c.get("service"), str)} if isinstance(clusters, list) else {}


def cluster_endpoints(clusters: dict[str, str], endpoints: dict[str, Any]
                      ) -> dict[str, tuple[EndpointConfig, ...]]:
    """Each ``service:`` cluster's endpoints from the control plane's answer (a service
    with none, or unreadable entries: no endpoints)."""
    out: dict[str, tuple[EndpointConfig, ...]] = {}
    for cluster, service in clusters.items():
        found: list[EndpointConfig] = []
        listed = endpoints.get(service) if isinstance(endpoints, dict) else None
        for item in listed if isinstance(listed, list) else []:
            try:
                host, port = split_address(item["address"])
                labels = {str(k): str(v) for k, v in dict(item.get("labels") or {}).items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignoring an unreadable endpoint of %s: %r", service, item)
                continue
            found.append(EndpointConfig(item["address"], host, port, labels))
        out[cluster] = tuple(found)
    return out


def with_endpoints(config: SidecarConfig, doc: dict[str, Any], endpoints: dict[str, Any]
                   ) -> SidecarConfig:
    """``config`` with its ``service:`` clusters' endpoints set."""
    found = cluster_endpoints(service_clusters(doc), endpoints)
    if not found:
        return config
    return replace(config, clusters=tuple(
        replace(c, endpoints=found[c.name]) if c.name in found else c
        for c in config.clusters))


# registration --------------------------------------------------------------------------
class Registrar:
    """Keeps this sidecar's instance registered while it serves: registers it once its
    listener is up, heartbeats it every third of the TTL, and deregisters it on
    :meth:`stop`. A failure is logged and retried; it never stops serving."""

    def __init__(self, sidecar: Sidecar | WorkerGroup, client: httpx.AsyncClient,
                 plane: ControlPlane, service: str, instance_id: str, labels: dict[str, str],
                 listener: str = DEFAULT_LISTENER, ttl: float = 10.0) -> None:
        self.sidecar = sidecar
        self.client = client
        self.plane = plane
        self.service = service
        self.instance_id = instance_id
        self.labels = labels
        self.listener = listener
        self.ttl = max(1.0, ttl)
        self.registered: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"{self.plane.url}/v1/services/{self.service}/instances/{self.instance_id}"

    def address(self) -> str | None:
        """Where this instance takes traffic: its listener's bound address (a wildcard
        host becomes this host's address)."""
        server = self.sidecar.servers.get(self.listener)
        if server is None:
            return None
        host = server.host
        if host in _WILDCARDS:
            host = socket.gethostbyname(socket.gethostname())
        return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        missing_said = False
        while True:
            # Not before it can serve (a policy waiting for its certificate, say).
            address = self.address() if self.sidecar.waiting_for() is None else None
            if address is None:
                if self.sidecar.snapshot is not None and not missing_said and (
                        self.listener not in self.sidecar.servers):
                    missing_said = True
                    log.info("not registering %s: the config has no listener %r",
                             self.service, self.listener)
                await asyncio.sleep(0.2)
                continue
            missing_said = False
            ok = await self._register(address)
            await asyncio.sleep(self.ttl / 3 if ok else min(1.0, self.ttl / 3))

    async def _register(self, address: str) -> bool:
        import httpx

        snapshot = self.sidecar.snapshot
        identity = snapshot.config.node.spiffe_id if snapshot is not None else None
        body = {"address": address, "labels": self.labels, "identity": identity,
                "ttl": self.ttl}
        try:
            response = await self.client.put(self.url, json=body)
        except httpx.HTTPError as exc:
            log.warning("cannot register %s at %s (will retry): %s", self.instance_id,
                        self.plane.url, exc)
            return False
        if response.status_code != 200:
            log.warning("registration of %s refused by %s: %s %s", self.instance_id,
                        self.plane.url, response.status_code, response.text[:200])
            return False
        if self.registered != address:
            log.info("registered %s of %s at %s", self.instance_id, self.service, address)
            self.registered = address
        return True

    async def stop(self, grace: float) -> None:
        """Stop heartbeating and deregister; then keep serving ``grace`` seconds so the
        control plane's push reaches the callers before the listener closes."""
        import httpx

        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.registered is None:
            return
        try:
            response = await self.client.delete(self.url, timeout=2.0)
        except httpx.HTTPError as exc:
            log.warning("cannot deregister %s (its TTL will): %s", self.instance_id, exc)
            return
        if response.status_code in (204, 404):
            log.info("deregistered %s; draining in %ss", self.instance_id, grace)
            await asyncio.sleep(grace)
