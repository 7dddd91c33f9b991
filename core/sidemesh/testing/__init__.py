"""Test helpers for sidemesh and its plugins: a real sidecar and real upstreams, each on
its own event loop in a background thread, so plain synchronous tests (and httpx) can
talk to them over real sockets.

    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        httpx.get(sc.url("main") + "/hello")
"""

from sidemesh.testing.loop import BackgroundLoop, free_port, raw_exchange, wait_for
from sidemesh.testing.process import ProxyProcess
from sidemesh.testing.sidecar import RunningSidecar, running_sidecar, simple_config
from sidemesh.testing.upstream import Reply, SeenRequest, Upstream

__all__ = [
    "BackgroundLoop",
    "ProxyProcess",
    "Reply",
    "RunningSidecar",
    "SeenRequest",
    "Upstream",
    "free_port",
    "raw_exchange",
    "running_sidecar",
    "simple_config",
    "wait_for",
]
