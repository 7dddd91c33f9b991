"""One worker of ``sidemesh proxy --concurrency N``: a sidecar whose listeners share their
ports with the other workers (``SO_REUSEPORT``) and whose config comes from the parent.

The parent (:mod:`sidemesh.process.workers`) starts it with ``python -m
sidemesh.process.worker`` and talks to it over a Unix socket, one JSON line each way per
exchange: ``apply`` a config, ``endpoints`` (a discovery update), and ``metrics``,
``clusters`` and ``ready`` for the parent's admin API. SIGTERM drains it, as it drains a
lone sidecar.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from sidemesh.api.shared import ENV_INDEX, ENV_STATE, open_table
from sidemesh.config.build import control_urls
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import ConfigInvalid
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.datapath.sidecar import ApplyError, Sidecar
from sidemesh.process.loop import run_loop, setup_logging
from sidemesh.process.sidecar import control_plane, new_sidecar, not_ready
from sidemesh.process.workers import (
    ENV_OPTIONS,
    ENV_SOCKET,
    LINE_LIMIT,
    decode_config,
    decode_endpoints,
)

__all__ = ["Worker", "main"]

log = logging.getLogger("sidemesh")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Worker:
    """Answers the parent's requests on one sidecar."""

    def __init__(self, sidecar: Sidecar, registry: PluginRegistry) -> None:
        self.sidecar = sidecar
        self.registry = registry

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line:
                answer = await self.answer(json.loads(line))
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError) as exc:
            log.warning("worker %s: bad exchange with the parent: %s", os.getpid(), exc)
        finally:
            writer.close()

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        sidecar = self.sidecar
        op = message.get("op")
        if op == "apply":
            try:
                config = decode_config(message, self.registry)
                await sidecar.apply(config, message["version"], message["source"])
            except ConfigInvalid as exc:
                return {"error": "; ".join(str(e) for e in exc.errors)}
            except ApplyError as exc:
                return {"error": str(exc)}
            return {"ports": {name: s.port for name, s in sidecar.servers.items()},
                    "reason": not_ready(sidecar)}
        if op == "endpoints":
            return {"updated": sidecar.update_endpoints(decode_endpoints(message["clusters"]))}
        if op == "ready":
            return {"reason": not_ready(sidecar)}
        if op == "metrics":
            return {"text": generate_latest(sidecar.metrics.registry).decode()}
        if op == "clusters":
            snapshot = sidecar.snapshot
            clusters = snapshot.clusters.values() if snapshot is not None else ()
            return {"clusters": [c.describe() for c in clusters]}
        return {"error": f"unknown op {op!r}"}


async def run_worker(socket_path: str, options: dict[str, Any]) -> int:
    registry = PluginRegistry.load()
    access_log = AccessLog.open(options.get("access_log") or "-")
    control = options.get("control")
    plane = (control_plane(control_urls(control["urls"]), control.get("token_file"),
                           control.get("ca_file")) if control else None)
    sidecar = new_sidecar(registry, access_log, control=plane)
    sidecar.reuse_port = True
    worker = Worker(sidecar, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group: the parent decides when workers drain.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    server = await asyncio.start_unix_server(worker.serve, socket_path, limit=LINE_LIMIT)
    await stop.wait()
    server.close()
    finished = await sidecar.drain(float(options.get("drain", 10.0)))
    if not finished:
        log.info("worker %s: drain timeout, some requests were cut", os.getpid())
    return 0


def _drain_with_parent() -> bool:
    """Have the kernel SIGTERM this worker when the parent dies (killed with SIGKILL,
    say): nobody would stop it, restart its siblings or answer for it on the admin API
    any more. False when the parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() != 1


def main() -> int:
    if not _drain_with_parent():
        return 0
    options: dict[str, Any] = json.loads(os.environ.get(ENV_OPTIONS) or "{}")
    setup_logging(options.get("log_level") or "info")
    state = os.environ.get(ENV_STATE)
    if state:
        open_table(Path(state), int(os.environ.get(ENV_INDEX, "0")))
    socket_path = os.environ[ENV_SOCKET]
    Path(socket_path).unlink(missing_ok=True)
    return run_loop(run_worker(socket_path, options))


if __name__ == "__main__":
    sys.exit(main())
