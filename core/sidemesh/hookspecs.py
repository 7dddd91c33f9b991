"""The whole sidemesh plugin contract.

A plugin is a Python distribution registered under the ``sidemesh`` entry-point group.
Its entry point names a module (or object) that implements *lifecycle hooks* with
``@sidemesh.hookimpl``. Lifecycle hooks are ordinary, synchronous pluggy hooks.

The one every policy plugin implements is :func:`sidemesh_policies`: it returns the
:class:`Policy` subclasses the plugin provides. A policy class carries a name, a JSON
Schema for its ``config`` and up to four *data-path hooks* -- :meth:`Policy.on_request`,
:meth:`Policy.select_upstream`, :meth:`Policy.connection_setup` and
:meth:`Policy.on_response`. The core makes one instance per (route, config) whenever a
config is applied and calls the data-path hooks directly, in the route's chain order,
without going through pluggy (pluggy is synchronous and orders hooks globally; a chain
is per route and may be ``async``).

Data-path hooks may be plain functions or ``async def``; the core checks once, when the
chain is compiled, and only awaits the ones that are coroutines. A policy that does
not override a hook costs nothing on the request path for that hook.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pluggy

if TYPE_CHECKING:
    from .messages import Attempt, Request, Response
    from .upstream import Cluster, Endpoint

__all__ = [
    "ConnectionSetup",
    "Policy",
    "PolicyContext",
    "hookimpl",
    "hookspec",
    "sidemesh_config_applied",
    "sidemesh_policies",
]

PROJECT = "sidemesh"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------
# Policy: the data-path contract
# --------------------------------------------------------------------------------------


@dataclass
class PolicyContext:
    """Where a policy instance lives; given to :class:`Policy` when it is created.

    :param plugin: the policy's name as written in the chain (``retry``).
    :param listener: the listener's name.
    :param route: the route's name, or ``None`` for the listener-level instance that only
        serves :meth:`Policy.connection_setup` with ``kind="listener"``.
    :param scope: ``"listener"`` when the chain entry came from the listener's
        ``plugins`` list, ``"route"`` when it came from the route's own list. The same
        plugin may behave differently by scope (``mtls`` terminates TLS on a listener
        and originates it on a route).
    :param cluster: the route's cluster (``None`` for the listener-level instance).
    :param clusters: every cluster of the applied config, by name.
    :param node: the ``node`` section of the config (service, namespace, trust_domain).
    :param shared: a dictionary kept per (plugin, cluster) across routes *and* across
        config reloads, for state that belongs to a cluster rather than a route (outlier
        detection counters, connection limits).
    """

    plugin: str
    listener: str
    route: str | None
    scope: Literal["listener", "route"]
    cluster: Cluster | None
    clusters: dict[str, Cluster]
    node: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConnectionSetup:
    """What :meth:`Policy.connection_setup` may fill in for one connection.

    :param kind: ``"listener"`` when a listener starts, ``"upstream"`` before a new
        connection to an endpoint is opened.
    :param listener: the listener's name.
    :param cluster: the cluster connected to (``kind="upstream"`` only).
    :param endpoint: the endpoint connected to (``kind="upstream"`` only).
    :param ssl_context: set it to speak TLS on this connection (a server context for a
        listener, a client context upstream).
    :param tls_optional: listener only: accept plain HTTP too on a TLS listener (the
        first byte tells them apart) -- Istio's ``PERMISSIVE`` mode.
    :param server_hostname: upstream only: SNI to send (default: none).
    :param verify_peer: upstream only: called with the server's DER certificate after the
        handshake; return ``None`` to accept or a message naming what was wrong. A
        rejected connection fails the attempt with flag ``UF``.
    """

    kind: Literal["listener", "upstream"]
    listener: str
    cluster: Cluster | None = None
    endpoint: Endpoint | None = None
    ssl_context: ssl.SSLContext | None = None
    tls_optional: bool = False
    server_hostname: str | None = None
    verify_peer: Callable[[bytes], str | None] | None = None


class Policy:
    """Base class of every policy. Subclass it, set :attr:`name` and :attr:`schema`, and
    override the hooks you need.

    One instance exists per (route, chain entry) of the applied config; per-route state
    (a retry budget, a split's weights) lives on the instance. A new config makes new
    instances; in-flight requests finish with the ones they started with.
    """

    #: The name used in ``plugins: [{name: ...}]``.
    name: ClassVar[str] = ""
    #: JSON Schema (Draft 2020-12) of this policy's ``config``.
    schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        """Create the instance for one chain entry.

        :param config: the entry's ``config``, already validated against :attr:`schema`
            with the schema's defaults filled in.
        :param context: where the instance lives (see :class:`PolicyContext`).
        """
        self.config = config
        self.context = context

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        """Semantic checks a JSON Schema cannot express. Sync; called when a config is
        validated, before anything is applied.

        :param config: the validated config with defaults filled in.
        :param context: where the instance would live.
        :returns: error messages; empty when the config is fine.
        """
        return []

    def on_request(self, request: Request) -> Response | None:
        """Request hook: called once per request, in chain order, after the route
        matched and before an upstream is chosen. Sync or async.

        :param request: the request; headers, path and ``cluster`` may be changed, and
            ``request.state`` keeps per-request state between hooks.
        :returns: ``None`` to continue, or a :class:`~sidemesh.messages.Response` to
            answer the client directly (the chain stops, no upstream is contacted, no
            response hook runs; :meth:`on_complete` still does).
        """
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        """Upstream-selection hook: called before each attempt, in chain order. Sync
        only (it runs on every attempt and must not wait).

        :param request: the request being sent.
        :param endpoints: the candidates left by the core and by earlier policies.
        :returns: the candidates to keep (a subset, a reordering, or the same). The
            load balancer picks among what the last policy returns; an empty list ends
            the request with ``503`` and flag ``UH``.
        """
        return endpoints

    def connection_setup(self, setup: ConnectionSetup) -> None:
        """Connection-setup hook: called when a listener starts (``kind="listener"``,
        listener-scope instances only) and before each new upstream connection
        (``kind="upstream"``). Sync only.

        :param setup: the connection's settings; set ``ssl_context`` and friends on it.
        """

    def on_response(self, request: Request, attempt: Attempt) -> None:
        """Response hook: called after each attempt, in reverse chain order, with the
        response head (or the failure). Sync or async.

        :param request: the request.
        :param attempt: the attempt's outcome. Read ``status``/``flag``/``error``;
            change ``attempt.response`` headers; call ``attempt.retry(delay)`` to ask for
            another attempt. The core decides whether one is possible (the body must be
            replayable, the route timeout must allow it, no byte may have reached the
            client yet).
        """

    def on_complete(self, request: Request, response: Response | None, flag: str | None) -> None:
        """Completion hook: called once when the request is finished and logged, in
        reverse chain order, after the last :meth:`on_response`. Sync only. For tracing
        and metrics: the response hook cannot know which attempt is the last.

        :param request: the request (``request.log`` has been written to the access log).
        :param response: the response head sent to the client, or ``None`` when none was
            (the client went away, or the request failed before any response).
        :param flag: the Envoy response flag of the request as a whole (``UF``, ``UT``,
            ``UH``, ``DC``...), or ``None``.
        """

    async def close(self) -> None:
        """Called when the config this instance belongs to has been replaced and its
        last request has finished. Async. Release background tasks here."""


# --------------------------------------------------------------------------------------
# Lifecycle hooks (pluggy, synchronous)
# --------------------------------------------------------------------------------------


@hookspec
def sidemesh_policies() -> list[type[Policy]]:  # type: ignore[empty-body]
    """Return the policy classes this plugin provides. Sync; called once when the
    plugin manager loads plugins (at start, and by ``sidemesh plugins``/``validate``).

    :returns: :class:`Policy` subclasses, each with a unique ``name``.
    """


@hookspec
def sidemesh_config_applied(version: str, source: str, config: dict[str, Any]) -> None:
    """Called after a config has been validated and swapped in. Sync; must not block.

    :param version: the config's version (the file's digest, or the control plane's
        version number).
    :param source: where it came from (``file:PATH`` or ``control:URL``).
    :param config: the applied config as a plain dictionary.
    """
