"""The public test kit for sidemesh and its plugins: a real sidecar and real upstreams,
each on its own event loop in a background thread, so plain synchronous tests (and
httpx) can talk to them over real sockets; and the core's objects made stand-alone, for
unit tests of a policy's hooks.

    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        httpx.get(sc.url("main") + "/hello")

``sidemesh.testing.control`` has a real control plane (``ControlServer``) and its CA.
``sidemesh.testing.grpc`` (imported on its own: it needs ``grpcio``) has a real gRPC
server and client with raw-bytes messages.
"""

from sidemesh.testing import control
from sidemesh.testing.config import (
    CompiledConfig,
    ConfigError,
    ConfigInvalid,
    build_config,
    compile_config,
    installed,
    run_cli,
    validate_config,
)
from sidemesh.testing.loop import (
    BackgroundLoop,
    free_port,
    in_forked_child,
    raw_exchange,
    wait_for,
)
from sidemesh.testing.objects import make_cluster, make_endpoint, make_request, policy_context
from sidemesh.testing.process import ProxyProcess
from sidemesh.testing.sidecar import RunningSidecar, running_sidecar, simple_config
from sidemesh.testing.upstream import Reply, SeenRequest, Upstream

__all__ = [
    "BackgroundLoop",
    "CompiledConfig",
    "ConfigError",
    "ConfigInvalid",
    "ProxyProcess",
    "Reply",
    "RunningSidecar",
    "SeenRequest",
    "Upstream",
    "build_config",
    "compile_config",
    "control",
    "free_port",
    "in_forked_child",
    "installed",
    "make_cluster",
    "make_endpoint",
    "make_request",
    "policy_context",
    "raw_exchange",
    "run_cli",
    "running_sidecar",
    "simple_config",
    "validate_config",
    "wait_for",
]
