"""sidemesh: a service mesh data plane whose every feature is a plugin.

This module is the public API: everything a plugin, an example or a tool built on
sidemesh may use, and the only names covered by the version's compatibility promise
(plugins pin ``sidemesh>=MAJOR.MINOR,<MAJOR.(MINOR+1)``). The subpackages behind it --
``api``, ``datapath``, ``config``, ``process``, ``control``, ``tools`` -- are internal and
may change in any release; ``sidemesh.testing`` is the public test kit.
"""

from sidemesh._version import __version__
from sidemesh.api.durations import format_duration, parse_duration
from sidemesh.api.hookspecs import hookimpl
from sidemesh.api.policy import ControlPlane, Explanation, Policy, PolicyContext
from sidemesh.api.shared import SharedCounter, shared_counter, worker_count
from sidemesh.api.spiffe import (
    SpiffeId,
    SpiffeIdError,
    SvidError,
    compile_globs,
    glob_match,
    parse_spiffe_id,
    spiffe_id_from_cert,
    validate_trust_domain,
    workload_id,
)
from sidemesh.datapath.connections import ConnectionInfo, ConnectionSetup
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.messages import Attempt, Headers, Request, Response
from sidemesh.datapath.stash import Stash, StashKey
from sidemesh.datapath.views import ClusterView, ConnectionCaps, EndpointView, RetryCaps

__all__ = [
    "Attempt",
    "ClusterView",
    "ConnectionCaps",
    "ConnectionInfo",
    "ConnectionSetup",
    "ControlPlane",
    "EndpointView",
    "Explanation",
    "Headers",
    "Policy",
    "PolicyContext",
    "Request",
    "Response",
    "ResponseFlag",
    "RetryCaps",
    "SharedCounter",
    "SpiffeId",
    "SpiffeIdError",
    "Stash",
    "StashKey",
    "SvidError",
    "__version__",
    "compile_globs",
    "format_duration",
    "glob_match",
    "hookimpl",
    "parse_duration",
    "parse_spiffe_id",
    "shared_counter",
    "spiffe_id_from_cert",
    "validate_trust_domain",
    "worker_count",
    "workload_id",
]
