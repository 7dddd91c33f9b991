"""The status port (``sidemesh proxy --status-port 15021``): what kubelet and Prometheus
need from a sidecar, on an address they can reach, and nothing else.

The admin API stays on loopback because it shows the whole config (``/config_dump``),
the endpoints and the plugins; this port answers only whether the sidecar is ready and
its metrics, as Istio's pilot-agent serves ``/healthz/ready`` on 15021 and Envoy's
Prometheus stats on 15090 apart from Envoy's admin port.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from sidemesh.datapath.messages import Response
from sidemesh.process.admin import metrics_response
from sidemesh.process.endpoints import Endpoint, EndpointServer
from sidemesh.process.sidecar import not_ready
from sidemesh.process.workers import Served, WorkerGroup
from sidemesh.process.workers_admin import WorkersStatus

if TYPE_CHECKING:
    from sidemesh.datapath.sidecar import Sidecar

__all__ = ["StatusServer", "start_status", "status_routes", "status_target"]

log = logging.getLogger("sidemesh")


def status_routes(sidecar: Sidecar) -> dict[str, Endpoint]:
    async def ready() -> Response:
        # The reason (listener names, a control plane's error) stays on the admin API:
        # anyone in the cluster can reach this port.
        if not_ready(sidecar) is None:
            return Response.text(200, "ready\n")
        return Response.text(503, "not ready\n")

    async def metrics() -> Response:
        return metrics_response(sidecar)

    return {"/healthz/ready": ready, "/stats/prometheus": metrics}


class StatusServer(EndpointServer):
    def __init__(self, sidecar: Sidecar, host: str, port: int) -> None:
        super().__init__(status_routes(sidecar), host, port, "status port")


async def start_status(sidecar: Served, host: str, port: int | None) -> EndpointServer | None:
    """Serve the status port on ``host:port``; ``None`` when ``port`` is ``None`` (off).

    :raises OSError: when it cannot listen there.
    """
    if port is None:
        return None
    status = (WorkersStatus(sidecar, host, port) if isinstance(sidecar, WorkerGroup)
              else StatusServer(sidecar, host, port))
    await status.start()
    shown = f"[{host}]" if ":" in host else host
    log.info("status port on %s:%s (/healthz/ready, /stats/prometheus)", shown, status.port)
    return status


def status_target(args: argparse.Namespace) -> tuple[str, int | None]:
    """``(host, port)`` of ``--status-address`` and ``--status-port``; port ``None``: off."""
    return getattr(args, "status_address", None) or "0.0.0.0", getattr(args, "status_port", None)
