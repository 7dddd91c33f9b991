"""``sidemesh proxy --concurrency N``: N worker processes serving every listener, as
Envoy's ``--concurrency`` runs N worker threads.

The parent serves no traffic. It is the one config watcher (file reloads, the control
plane), hands each validated config to every worker, runs the one admin API and status
port (answers summed over the workers), restarts a worker that dies and drains them all
on SIGTERM. The workers bind the same ports with ``SO_REUSEPORT``, so the kernel spreads
connections over them; what Envoy keeps cluster-wide (circuit-breaker counts, outlier
ejections) they share through :mod:`sidemesh.api.shared`.

:class:`WorkerGroup` offers what the agent, the file mode and the registrar use of a
:class:`~sidemesh.datapath.sidecar.Sidecar` (``apply``, ``update_endpoints``,
``servers``, ``snapshot``, ``waiting_for``, ``drain``), so they run it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sidemesh.api.shared import ENV_INDEX, ENV_STATE, ENV_WORKERS, create_table
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import build
from sidemesh.datapath.model import EndpointConfig, SidecarConfig
from sidemesh.datapath.sidecar import ApplyError, Sidecar

__all__ = ["Applied", "Bound", "Served", "WorkerGroup", "cpu_count", "decode_config",
           "encode_config"]

log = logging.getLogger("sidemesh")

ENV_SOCKET = "SIDEMESH_WORKER_SOCKET"
#: JSON: log_level, access_log, drain (seconds), control (urls, token_file, ca_file).
ENV_OPTIONS = "SIDEMESH_WORKER_OPTIONS"
#: the largest exchange line (a metrics page of a big config).
LINE_LIMIT = 64 << 20
#: how long a worker has to import its plugins and listen for the parent.
START_TIMEOUT = 30.0
EXCHANGE_TIMEOUT = 30.0
#: a worker that dies sooner than this after it started waits before it is restarted.
RESTART_DELAY = 1.0


def cpu_count() -> int:
    """The cores this process may run on (``--concurrency 0``), as Envoy counts them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def encode_config(config: SidecarConfig, ports: dict[str, int]) -> dict[str, Any]:
    """What a worker needs to rebuild ``config``: the document, each cluster's endpoints
    (discovered ones are not in the document) and the ports bound for ``port: 0``."""
    return {
        "raw": config.raw,
        "endpoints": {c.name: [[e.address, e.host, e.port, e.labels] for e in c.endpoints]
                      for c in config.clusters},
        "ports": ports,
    }


def _endpoints(listed: list[list[Any]]) -> tuple[EndpointConfig, ...]:
    return tuple(EndpointConfig(a, h, p, dict(labels)) for a, h, p, labels in listed)


def decode_config(message: dict[str, Any], registry: PluginRegistry) -> SidecarConfig:
    """The config :func:`encode_config` encoded."""
    config = build(message["raw"], registry)
    endpoints: dict[str, list[list[Any]]] = message["endpoints"]
    ports: dict[str, int] = message["ports"]
    return replace(
        config,
        clusters=tuple(replace(c, endpoints=_endpoints(endpoints[c.name]))
                       if c.name in endpoints else c for c in config.clusters),
        listeners=tuple(replace(lc, port=ports[lc.name]) if lc.port == 0 and lc.name in ports
                        else lc for lc in config.listeners),
    )


def decode_endpoints(clusters: dict[str, list[list[Any]]]
                     ) -> dict[str, tuple[EndpointConfig, ...]]:
    return {name: _endpoints(listed) for name, listed in clusters.items()}


@dataclass(frozen=True)
class Applied:
    """The config every worker runs (what ``/config_dump`` shows)."""

    version: str
    source: str
    config: SidecarConfig
    applied_at: float


@dataclass(frozen=True)
class Bound:
    """A listener's address, as every worker bound it."""

    host: str
    port: int


class _Worker:
    def __init__(self, index: int, socket_path: str) -> None:
        self.index = index
        self.socket_path = socket_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        #: it listens for the parent and runs the current config.
        self.serving = False
        self.reason: str | None = "starting"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class WorkerGroup:
    """N worker processes run as one sidecar."""

    def __init__(self, workers: int, options: dict[str, Any]) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sidemesh-workers-"))
        self._state = self._dir / "state"
        create_table(self._state, workers)
        self._options = options
        self.workers = [_Worker(i, str(self._dir / f"worker-{i}.sock")) for i in range(workers)]
        self.snapshot: Applied | None = None
        self.servers: dict[str, Bound] = {}
        self.draining = False
        self._current: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []

    # processes -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each listens for the parent.

        :raises OSError: when one does not come up.
        """
        for worker in self.workers:
            self._spawn(worker)
        for worker in self.workers:
            await self._wait_listening(worker)
            worker.serving = True
        self._tasks = [asyncio.create_task(self._keep(w)) for w in self.workers]

    def _spawn(self, worker: _Worker) -> None:
        env = {**os.environ, ENV_STATE: str(self._state), ENV_INDEX: str(worker.index),
               ENV_WORKERS: str(len(self.workers)), ENV_SOCKET: worker.socket_path,
               ENV_OPTIONS: json.dumps(self._options)}
        Path(worker.socket_path).unlink(missing_ok=True)
        worker.serving = False
        worker.reason = "starting"
        worker.proc = subprocess.Popen([sys.executable, "-m", "sidemesh.process.worker"],
                                       env=env)
        worker.started = time.monotonic()

    async def _wait_listening(self, worker: _Worker) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise OSError(f"worker {worker.index} exited with {worker.proc.returncode} "
                              "as it started")
            with contextlib.suppress(OSError):
                await self._exchange(worker, {"op": "ready"})
                return
            await asyncio.sleep(0.05)
        raise OSError(f"worker {worker.index} did not start in {START_TIMEOUT:g}s")

    async def _keep(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it dies (until the group drains), and refresh its
        readiness while it waits for something (a policy's certificate)."""
        while not self.draining:
            await asyncio.sleep(0.1)
            proc = worker.proc
            if proc is None or self.draining:
                continue
            if proc.poll() is None:
                if worker.serving and worker.reason is not None and self.snapshot is not None:
                    with contextlib.suppress(OSError, ValueError):
                        worker.reason = (await self._exchange(worker, {"op": "ready"}))["reason"]
                continue
            worker.serving = False
            worker.restarts += 1
            log.error("worker %s (pid %s) exited with %s; restarting it", worker.index,
                      proc.pid, proc.returncode)
            if time.monotonic() - worker.started < RESTART_DELAY:
                await asyncio.sleep(RESTART_DELAY)
            try:
                self._spawn(worker)
                await self._wait_listening(worker)
                async with self._lock:
                    if self._current is not None:
                        answer = await self._exchange(worker, self._current)
                        if "error" in answer:
                            raise OSError(answer["error"])
                        worker.reason = answer["reason"]
                    worker.serving = True
            except (OSError, ValueError) as exc:
                log.error("worker %s did not come back: %s", worker.index, exc)

    async def _exchange(self, worker: _Worker, message: dict[str, Any]) -> dict[str, Any]:
        """One request to ``worker`` and its answer.

        :raises OSError: the worker cannot be reached (it is starting, or died).
        """
        async with asyncio.timeout(EXCHANGE_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(worker.socket_path,
                                                                limit=LINE_LIMIT)
            try:
                writer.write(json.dumps(message).encode() + b"\n")
                line = await reader.readline()
            finally:
                writer.close()
        if not line:
            raise OSError(f"worker {worker.index} closed the exchange")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, op: str) -> list[dict[str, Any]]:
        """Each serving worker's answer to ``op`` (``metrics``, ``clusters``, ``ready``),
        with its ``worker`` index and ``pid``; a worker that cannot answer is left out."""
        serving = [w for w in self.workers if w.serving]
        answers = await asyncio.gather(*(self._exchange(w, {"op": op}) for w in serving),
                                       return_exceptions=True)
        return [{**a, "worker": w.index, "pid": w.pid}
                for w, a in zip(serving, answers, strict=True) if isinstance(a, dict)]

    def describe(self) -> list[dict[str, Any]]:
        return [{"worker": w.index, "pid": w.pid, "serving": w.serving,
                 "restarts": w.restarts} for w in self.workers]

    # the Sidecar interface -----------------------------------------------------------
    def waiting_for(self) -> str | None:
        if self.snapshot is None:
            return "no config applied yet"
        for worker in self.workers:
            if not worker.serving:
                return f"worker {worker.index} is starting"
            if worker.reason is not None:
                return f"worker {worker.index}: {worker.reason}"
        return None

    async def apply(self, config: SidecarConfig, version: str, source: str) -> None:
        """Apply ``config`` on every worker, or on none: a worker that refuses it makes
        the others go back to the config they ran.

        :raises ApplyError: with the first worker's reason.
        """
        async with self._lock:
            ports = {lc.name: self.servers[lc.name].port for lc in config.listeners
                     if lc.port == 0 and lc.name in self.servers
                     and self.servers[lc.name].host == lc.host}
            message = {"op": "apply", **encode_config(config, ports), "version": version,
                       "source": source}
            serving = [w for w in self.workers if w.serving]
            # The first worker to answer binds any "port: 0" listener; the others join it.
            first: dict[str, Any] | None = None
            while first is None and serving:
                leader = serving.pop(0)
                first = await self._apply_on(leader, message)
            if first is None:
                raise ApplyError(f"cannot apply config {version}: no worker is running")
            if "error" in first:
                raise ApplyError(first["error"])
            bound: dict[str, int] = first["ports"]
            message["ports"] = {lc.name: bound[lc.name] for lc in config.listeners
                                if lc.port == 0 and lc.name in bound}
            rest = await asyncio.gather(*(self._apply_on(w, message) for w in serving))
            refused = [a["error"] for a in rest if a is not None and "error" in a]
            if refused:
                done = [leader, *(w for w, a in zip(serving, rest, strict=True)
                                  if a is not None and "error" not in a)]
                if self._current is not None:
                    await asyncio.gather(*(self._apply_on(w, self._current) for w in done))
                raise ApplyError(refused[0])
            self._current = message
            self.snapshot = Applied(version, source, config, time.time())
            self.servers = {lc.name: Bound(lc.host, bound[lc.name]) for lc in config.listeners
                            if lc.name in bound}

    async def _apply_on(self, worker: _Worker, message: dict[str, Any]
                        ) -> dict[str, Any] | None:
        """``worker``'s answer to a config; None when it died under it (restarted, it
        gets the config in force then)."""
        try:
            answer = await self._exchange(worker, message)
        except (OSError, ValueError) as exc:
            log.warning("worker %s did not answer the config: %s", worker.index, exc)
            return None
        worker.reason = answer.get("reason")
        return answer

    def update_endpoints(self, clusters: dict[str, tuple[EndpointConfig, ...]]) -> list[str]:
        """Send a discovery update to every worker (and to any worker restarted later);
        the clusters of the running config it names."""
        if self.snapshot is None or self._current is None:
            return []
        config = self.snapshot.config
        known = {c.name for c in config.clusters}
        updated = [name for name in clusters if name in known]
        config = replace(config, clusters=tuple(
            replace(c, endpoints=clusters[c.name]) if c.name in clusters else c
            for c in config.clusters))
        self.snapshot = replace(self.snapshot, config=config)
        self._current = {**self._current, **encode_config(config, self._current["ports"])}
        listed = {name: [[e.address, e.host, e.port, e.labels] for e in clusters[name]]
                  for name in updated}
        message = {"op": "endpoints", "clusters": listed}
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks += [asyncio.create_task(self._tell(w, message))
                        for w in self.workers if w.serving]
        return updated

    async def _tell(self, worker: _Worker, message: dict[str, Any]) -> None:
        try:
            await self._exchange(worker, message)
        except (OSError, ValueError) as exc:
            # Restarted, it gets the endpoints with the config in force.
            log.warning("worker %s did not take the endpoints: %s", worker.index, exc)

    async def drain(self, timeout: float) -> bool:
        """SIGTERM every worker (each drains its requests, up to ``timeout`` seconds) and
        wait for them; whether all of them finished and exited 0."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout + 5.0
        clean = True
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                await asyncio.to_thread(proc.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
            clean = clean and proc.returncode == 0
        shutil.rmtree(self._dir, ignore_errors=True)
        return clean


#: what the agent, the file mode and the admin API run: one sidecar, or N workers.
Served = Sidecar | WorkerGroup
