"""What every long-running sidecar mode shares (``sidemesh proxy -c FILE`` and
``sidemesh proxy --control URL``): the admin API, signals, readiness log, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import sidemesh.datapath as compiled  #
from sidemesh.config.build import split_address
from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.sidecar import Sidecar
from sidemesh.process.admin import AdminServer, EmbeddedApp

__all__ = ["install_signals", "log_ready", "shut_down", "start_admin"]

log = logging.getLogger("sidemesh")


async def start_admin(sidecar: Sidecar, registry: PluginRegistry, address: str) -> AdminServer:
    """Start the admin API on ``address``.

    :raises OSError: when it cannot listen there.
    """
    host, port = split_address(address, "127.0.0.1")
    admin = AdminServer(sidecar, registry, host, port)
    await admin.start()
    return admin


def install_signals(stop: asyncio.Event, on_hup: Callable[[], object]) -> None:
    """SIGTERM and SIGINT set ``stop`` (the caller drains); SIGHUP calls ``on_hup``."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)


def log_ready(sidecar: Sidecar, service: str, admin: AdminServer | None,
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


async def shut_down(sidecar: Sidecar, admin: AdminServer | None, drain: float,
                    status: EmbeddedApp | None = None) -> None:
    """Drain in-flight requests (up to ``drain`` seconds), then stop the admin API and the
    status port (which answers ``503`` while the sidecar drains, so kubelet sees it)."""
    log.info("draining (up to %ss)", drain)
    finished = await sidecar.drain(drain)
    for server in (admin, status):
        if server is not None:
            await server.stop()
    log.info("stopped%s", "" if finished else " (drain timeout: some requests were cut)")
