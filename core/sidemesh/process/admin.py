"""The admin API of one sidecar (SPEC section 4), a small Starlette app.

It runs on the sidecar's event loop through uvicorn, off the data path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidemesh.process.sidecar import not_ready

if TYPE_CHECKING:
    from sidemesh.config.registry import PluginRegistry
    from sidemesh.datapath.sidecar import Sidecar

__all__ = ["AdminServer", "EmbeddedApp", "admin_app", "metrics_response",
           "plugins_body"]


def metrics_response(sidecar: Sidecar) -> Response:
    """The sidecar's metrics in the Prometheus text format."""
    return Response(generate_latest(sidecar.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def plugins_body(registry: PluginRegistry) -> dict[str, Any]:
    """``GET /plugins``: the installed plugins and the ones that failed to load."""
    return {
        "plugins": [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "hooks": list(p.hooks),
                "schema_id": p.schema_id,
            }
            for p in registry.all()
        ],
        "load_errors": [
            {"name": e.name, "distribution": e.distribution, "message": e.message}
            for e in registry.load_errors
        ],
    }


def admin_app(sidecar: Sidecar, registry: PluginRegistry) -> Starlette:
    async def ready(_: Request) -> Response:
        reason = not_ready(sidecar)
        if reason is None and sidecar.snapshot is not None:
            return JSONResponse({"ready": True, "version": sidecar.snapshot.version})
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    async def config_dump(_: Request) -> Response:
        snapshot = sidecar.snapshot
        if snapshot is None:
            return JSONResponse({"version": None, "source": None, "config": None})
        return JSONResponse(
            {
                "version": snapshot.version,
                "source": snapshot.source,
                "applied_at": snapshot.applied_at,
                "config": snapshot.config.raw,
            }
        )

    async def clusters(_: Request) -> Response:
        snapshot = sidecar.snapshot
        if snapshot is None:
            return JSONResponse({"clusters": []})
        return JSONResponse({"clusters": [c.describe() for c in snapshot.clusters.values()]})

    async def plugins(_: Request) -> Response:
        return JSONResponse(plugins_body(registry))

    async def metrics(_: Request) -> Response:
        return metrics_response(sidecar)

    return Starlette(
        routes=[
            Route("/ready", ready),
            Route("/config_dump", config_dump),
            Route("/clusters", clusters),
            Route("/plugins", plugins),
            Route("/metrics", metrics),
        ]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the sidecar's loop: the sidecar owns signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedApp:
    """A Starlette ``app`` served by uvicorn on the sidecar's loop; ``what`` names it in
    errors."""

    def __init__(self, app: Starlette, host: str, port: int, what: str) -> None:
        self.what = what
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # No WebSocket endpoint: "auto" would import websockets (~2.5 MiB) anyway.
            ws="none",
        )
        self.server = _EmbeddedServer(config)

    async def start(self) -> None:
        address = f"{self.server.config.host}:{self.server.config.port}"
        config = self.server.config
        if not config.loaded:
            config.load()
        # What uvicorn's own serve() does before startup(); its main loop is not needed.
        self.server.lifespan = config.lifespan_class(config)
        try:
            # uvicorn exits the process when it cannot bind; here that is an error to report.
            await self.server.startup()
        except SystemExit:
            raise OSError(f"{self.what} cannot listen on {address}") from None

    @property
    def port(self) -> int:
        servers = self.server.servers
        return int(servers[0].sockets[0].getsockname()[1]) if servers else 0

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.server.shutdown()


class AdminServer(EmbeddedApp):
    def __init__(self, sidecar: Sidecar, registry: PluginRegistry, host: str, port: int) -> None:
        super().__init__(admin_app(sidecar, registry), host, port, "admin API")
