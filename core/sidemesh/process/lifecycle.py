"""What every long-running sidecar mode shares (``sidemesh proxy -c FILE`` and
``sidemesh proxy --control URL``): the admin API, signals, readiness log, drain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable

import sidemesh.datapath as compiled  #
from sidemesh.api.policy import ControlPlane
from sidemesh.config.build import split_address
from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.process.admin import AdminServer
from sidemesh.process.endpoints import EndpointServer
from sidemesh.process.sidecar import new_sidecar
from sidemesh.process.workers import Served, WorkerGroup, cpu_count
from sidemesh.process.workers_admin import WorkersAdmin

__all__ = ["install_signals", "log_ready", "new_served", "shut_down", "start_admin"]

log = logging.getLogger("sidemesh")


async def new_served(args: argparse.Namespace, registry: PluginRegistry,
                     access_log: AccessLog, drain: float, control: ControlPlane | None,
                     token_file: str | None = None) -> Served:
    """The sidecar ``--concurrency`` asks for: one in this process (the default), or a
    group of worker processes, started; ``token_file`` is ``control``'s (the workers
    read the token from it as the parent does).

    :raises OSError: when a worker does not start.
    """
    workers = getattr(args, "concurrency", 1)
    workers = cpu_count() if workers == 0 else workers
    if workers == 1:
        return new_sidecar(registry, access_log, control=control)
    group = WorkerGroup(workers, {
        "log_level": getattr(args, "log_level", "info") or "info",
        "access_log": getattr(args, "access_log", "-") or "-",
        "drain": drain,
        "control": {"urls": list(control.urls), "token_file": token_file,
                    "ca_file": control.ca_file} if control is not None else None,
    })
    log.info("starting %s workers", workers)
    try:
        await group.start()
    except OSError:
        await group.drain(0)
        raise
    return group


async def start_admin(sidecar: Served, registry: PluginRegistry, address: str) -> EndpointServer:
    """Start the admin API on ``address``.

    :raises OSError: when it cannot listen there.
    """
    host, port = split_address(address, "127.0.0.1")
    admin = (WorkersAdmin(sidecar, registry, host, port) if isinstance(sidecar, WorkerGroup)
             else AdminServer(sidecar, registry, host, port))
    await admin.start()
    return admin


def install_signals(stop: asyncio.Event, on_hup: Callable[[], object]) -> None:
    """SIGTERM and SIGINT set ``stop`` (the caller drains); SIGHUP calls ``on_hup``."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)


def log_ready(sidecar: Served, service: str, admin: EndpointServer | None,
              admin_address: str | None) -> None:
    listening = {name: f"{s.host}:{s.port}" for name, s in sidecar.servers.items()}
    where = f"{admin_address.rpartition(':')[0]}:{admin.port}" if admin and admin_address \
        else "off"
    path = compiled.state()
    if path.remedy:
        log.warning("request path %s (about half the requests per second of the compiled "
                    "one); %s", path.reason, path.remedy)
    log.info(
        "sidecar %s ready: listeners %s, admin %s; request path %s",
        service, listening, where, path.reason,
    )


async def shut_down(sidecar: Served, admin: EndpointServer | None, drain: float,
                    status: EndpointServer | None = None) -> None:
    """Drain in-flight requests (up to ``drain`` seconds), then stop the admin API and the
    status port (which answers ``503`` while the sidecar drains, so kubelet sees it)."""
    log.info("draining (up to %ss)", drain)
    finished = await sidecar.drain(drain)
    for server in (admin, status):
        if server is not None:
            await server.stop()
    log.info("stopped%s", "" if finished else " (drain timeout: some requests were cut)")
    # The process exits next. Another SIGTERM (a supervisor's, or kubelet's after a
    # slow drain) while the interpreter winds down would turn a clean exit into death by
    # signal once the loop's handlers are gone: ignore it from here on.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
