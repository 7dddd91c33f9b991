"""``sidemesh proxy``: run a sidecar from a file, reload on SIGHUP, drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from sidemesh.api.durations import parse_duration
from sidemesh.config.build import control_urls
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import ConfigInvalid, config_digest, load_file
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.datapath.sidecar import ApplyError
from sidemesh.process.endpoints import EndpointServer
from sidemesh.process.lifecycle import (
    install_signals,
    log_ready,
    new_served,
    shut_down,
    start_admin,
)
from sidemesh.process.loop import run_loop, setup_logging
from sidemesh.process.sidecar import control_plane
from sidemesh.process.status import start_status, status_target

__all__ = ["main_proxy", "serve_file"]

log = logging.getLogger("sidemesh")


async def serve_file(
    path: Path, registry: PluginRegistry, access_log: AccessLog, drain: float,
    status_at: tuple[str, int | None] = ("0.0.0.0", None),
    args: argparse.Namespace | None = None,
) -> int:
    config = load_file(path, registry)
    # Routes come from the file; certificates (mtls) may still come from the CA.
    control = (
        control_plane(
            control_urls(config.control.url), config.control.token_file, config.control.ca_file
        )
        if config.control is not None
        else None
    )
    try:
        sidecar = await new_served(args or argparse.Namespace(), registry, access_log, drain,
                                   control, config.control.token_file if config.control else None)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    try:
        await sidecar.apply(config, config_digest(config.raw), f"file:{path}")
    except ApplyError as exc:
        log.error("%s", exc)
        return 1
    admin: EndpointServer | None = None
    status: EndpointServer | None = None
    try:
        if config.admin:
            admin = await start_admin(sidecar, registry, config.admin)
        status = await start_status(sidecar, *status_at)
    except OSError as exc:
        log.error("%s", exc)
        await sidecar.drain(0)
        if admin is not None:
            await admin.stop()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reload() -> None:
        try:
            new = load_file(path, registry)
            await sidecar.apply(new, config_digest(new.raw), f"file:{path}")
        except ConfigInvalid as exc:
            log.error(
                "reload of %s rejected, keeping config %s: %s",
                path,
                sidecar.snapshot.version if sidecar.snapshot else "-",
                "; ".join(str(e) for e in exc.errors),
            )
        except ApplyError as exc:
            log.error("reload of %s failed, keeping the running config: %s", path, exc)

    install_signals(stop, lambda: loop.create_task(reload()))
    log_ready(sidecar, config.node.service, admin, config.admin)
    await stop.wait()
    await shut_down(sidecar, admin, drain, status)
    return 0


def main_proxy(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", "info") or "info")
    registry = PluginRegistry.load()
    access_log = AccessLog.open(getattr(args, "access_log", "-") or "-")
    drain_arg = getattr(args, "drain_timeout", 10.0) or 10.0
    drain = parse_duration(drain_arg) if isinstance(drain_arg, str) else float(drain_arg)
    if getattr(args, "control", None):
        from sidemesh.process.agent import run_agent

        return run_loop(run_agent(args, registry, access_log, drain))
    if not args.config:
        print(
            "sidemesh proxy: give a config file (-c sidemesh.yaml) or --control URL",
            file=sys.stderr,
        )
        return 2
    path = Path(args.config)
    try:
        load_file(path, registry)
    except ConfigInvalid as exc:
        print(f"{path}: invalid config, nothing started:", file=sys.stderr)
        for error in exc.errors:
            print(f"  - {error}", file=sys.stderr)
        return 1
    try:
        return run_loop(serve_file(path, registry, access_log, drain, status_target(args),
                                   args))
    except KeyboardInterrupt:
        return 130
