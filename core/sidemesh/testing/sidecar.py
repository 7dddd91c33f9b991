"""A real sidecar, applied from a config dict, on a background event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import IO, Any

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import build
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.datapath.sidecar import Sidecar
from sidemesh.datapath.views import ClusterView
from sidemesh.process.sidecar import new_sidecar
from sidemesh.testing.loop import BackgroundLoop

__all__ = ["RunningSidecar", "running_sidecar", "simple_config"]


class RunningSidecar:
    """A sidecar applied from a config dict, running on a background loop."""

    def __init__(self, sidecar: Sidecar, registry: PluginRegistry, bg: BackgroundLoop) -> None:
        self.sidecar = sidecar
        self.registry = registry
        self.bg = bg

    def port(self, listener: str) -> int:
        return self.sidecar.servers[listener].port

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.port(listener)}"

    def cluster(self, name: str) -> ClusterView:
        """The applied config's cluster ``name``, as policies see it."""
        snapshot = self.sidecar.snapshot
        assert snapshot is not None
        return snapshot.clusters[name]

    def log_to(self, stream: IO[str]) -> None:
        """Write the access log (one JSON line per request) to ``stream`` from now on."""
        self.sidecar.access_log = AccessLog(stream)

    def apply(self, doc: dict[str, Any], version: str = "test") -> None:
        """Apply another config (raises ``ConfigInvalid``/``ApplyError`` like a reload)."""
        config = build(doc, self.registry)
        self.bg.run(self.sidecar.apply(config, version, "test"))


def simple_config(
    *upstreams: str,
    plugins: Sequence[dict[str, Any]] = (),
    listener_plugins: Sequence[dict[str, Any]] = (),
    timeout: str = "15s",
    load_balancer: str = "round_robin",
) -> dict[str, Any]:
    """One listener ``main`` on a free port, one route ``/`` to cluster ``backend``."""
    return {
        "node": {"service": "test"},
        "clusters": [
            {
                "name": "backend",
                "connect_timeout": "1s",
                "load_balancer": load_balancer,
                "endpoints": [{"address": a} for a in upstreams],
            }
        ],
        "listeners": [
            {
                "name": "main",
                "address": "127.0.0.1:0",
                "plugins": list(listener_plugins),
                "routes": [
                    {
                        "name": "all",
                        "match": {"prefix": "/"},
                        "cluster": "backend",
                        "timeout": timeout,
                        "plugins": list(plugins),
                    }
                ],
            }
        ],
    }


@contextlib.contextmanager
def running_sidecar(
    doc: dict[str, Any], extra_plugins: Sequence[object] = (), drain: float = 2.0
) -> Iterator[RunningSidecar]:
    """Validate ``doc``, apply it to a fresh sidecar and yield it; drained on exit.
    Installed plugins are found through entry points; ``extra_plugins`` adds more."""
    registry = PluginRegistry.load(extra_plugins=extra_plugins)
    config = build(doc, registry)
    bg = BackgroundLoop()
    sidecar = bg.run(_make_sidecar(registry))
    try:
        bg.run(sidecar.apply(config, "test", "test"))
        yield RunningSidecar(sidecar, registry, bg)
    finally:
        with contextlib.suppress(Exception):
            bg.run(sidecar.drain(drain), timeout=drain + 5)
        bg.close()


async def _make_sidecar(registry: PluginRegistry) -> Sidecar:
    # The sidecar's asyncio primitives must be created on its own loop.
    return new_sidecar(registry)
