"""The admin API of one sidecar (SPEC section 4): a few GET endpoints, served on the
sidecar's event loop off the data path (endpoints.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidemesh.datapath.messages import Response
from sidemesh.process.endpoints import Endpoint, EndpointServer, bytes_answer
from sidemesh.process.sidecar import not_ready

if TYPE_CHECKING:
    from sidemesh.config.registry import PluginRegistry
    from sidemesh.datapath.sidecar import Sidecar

__all__ = ["AdminServer", "admin_routes", "metrics_response", "plugins_body"]


def metrics_response(sidecar: Sidecar) -> Response:
    """The sidecar's metrics in the Prometheus text format."""
    return bytes_answer(generate_latest(sidecar.metrics.registry), CONTENT_TYPE_LATEST)


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


def admin_routes(sidecar: Sidecar, registry: PluginRegistry) -> dict[str, Endpoint]:
    async def ready() -> Response:
        reason = not_ready(sidecar)
        if reason is None and sidecar.snapshot is not None:
            return Response.json(200, {"ready": True, "version": sidecar.snapshot.version})
        return Response.json(503, {"ready": False, "reason": reason})

    async def config_dump() -> Response:
        snapshot = sidecar.snapshot
        if snapshot is None:
            return Response.json(200, {"version": None, "source": None, "config": None})
        return Response.json(
            200,
            {
                "version": snapshot.version,
                "source": snapshot.source,
                "applied_at": snapshot.applied_at,
                "config": snapshot.config.raw,
            },
        )

    async def clusters() -> Response:
        snapshot = sidecar.snapshot
        if snapshot is None:
            return Response.json(200, {"clusters": []})
        return Response.json(200, {"clusters": [c.describe() for c in snapshot.clusters.values()]})

    async def plugins() -> Response:
        return Response.json(200, plugins_body(registry))

    async def metrics() -> Response:
        return metrics_response(sidecar)

    return {
        "/ready": ready,
        "/config_dump": config_dump,
        "/clusters": clusters,
        "/plugins": plugins,
        "/metrics": metrics,
    }


class AdminServer(EndpointServer):
    def __init__(self, sidecar: Sidecar, registry: PluginRegistry, host: str, port: int) -> None:
        super().__init__(admin_routes(sidecar, registry), host, port, "admin API")
