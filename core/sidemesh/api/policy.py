"""The data-path contract: :class:`Policy`, the context it lives in, and what it may
describe of itself to ``sidemesh explain``.

The core makes one policy instance per (route, config) whenever a config is applied and
calls its data-path hooks directly, in the route's chain order, without going through
pluggy (pluggy is synchronous and orders hooks globally; a chain is per route and may be
``async``). Data-path hooks may be plain functions or ``async def``; the core checks
once, when the chain is compiled, and only awaits the ones that are coroutines. A policy
that does not override a hook costs nothing on the request path for that hook.

The lifecycle hooks a plugin implements with ``@sidemesh.hookimpl`` (the one that returns
these classes among them) are in :mod:`sidemesh.api.hookspecs`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.messages import Attempt, Request, Response
from sidemesh.datapath.views import ClusterView, EndpointView

__all__ = ["ControlPlane", "Explanation", "Policy", "PolicyContext"]


@dataclass(eq=False)
class ControlPlane:
    """The control plane a sidecar takes its config from (``sidemesh proxy --control``):
    one replica at a time, the next one (round-robin) when the one in use fails.

    :param url: the base URL of the replica in use (``http://127.0.0.1:15010``): the
        first of ``urls`` until one fails (see :meth:`fail_over`).
    :param token: returns the sidecar's current bearer token (read anew on each call, so
        a rotated token file is picked up).
    :param ca_file: for ``https://`` URLs, the CA bundle the control plane's certificate
        must chain to (``--control-ca``, for every replica); ``None``: the system's trust
        store.
    :param urls: the base URLs of every replica, in the order they are tried
        (``--control URL1,URL2``); ``()`` means ``(url,)``.
    """

    url: str
    token: Callable[[], str]
    ca_file: str | None = None
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            self.urls = (self.url,)
        elif self.url not in self.urls:
            raise ValueError(f"{self.url!r} is not one of the control plane's urls")

    def fail_over(self, failed: str) -> str:
        """Say that the replica at ``failed`` did not answer (a connection error, a
        timeout, a ``5xx``): when it is still the one in use, the next of :attr:`urls`
        becomes :attr:`url`. Every user of the control plane shares the replica in use,
        so two that see the same failure move it once.

        :returns: the URL to use now.
        """
        if failed == self.url and len(self.urls) > 1:
            self.url = self.urls[(self.urls.index(failed) + 1) % len(self.urls)]
        return self.url

    def verify(self) -> ssl.SSLContext | bool:
        """What an HTTPS client of the control plane verifies its certificate with."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True


@dataclass
class Explanation:
    """What a policy would do with one request, for ``sidemesh explain``.

    :param summary: one line (``sends traffic, sticky on x-user``).
    :param details: further lines, shown indented under the summary.
    :param data: the same as JSON-ready data, for ``explain --json``.
    """

    summary: str
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


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
    :param control: the control plane the sidecar runs under, or ``None`` when it runs
        from a file (where a plugin fetches certificates from, for instance).
    :param replaces: for a route entry that replaces the listener's entry of the same
        plugin, that entry's config (defaults filled in); ``None`` otherwise. A policy
        that authorises requests keeps the listener's rules with it, so a route can
        narrow them but never drop them.
    """

    plugin: str
    listener: str
    route: str | None
    scope: Literal["listener", "route"]
    cluster: ClusterView | None
    clusters: Mapping[str, ClusterView]
    node: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)
    control: ControlPlane | None = None
    replaces: dict[str, Any] | None = None


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
    #: Set by a policy that authorises requests (``mtls``): a route may narrow a
    #: listener-level entry of it (the route's instance gets ``context.replaces``), but
    #: ``validate`` refuses a route entry that disables it.
    authorizes: ClassVar[bool] = False

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

    @classmethod
    def explain(
        cls, config: dict[str, Any], request: Request, context: PolicyContext
    ) -> Explanation | None:
        """Describe what this policy would do with ``request``, for ``sidemesh explain``
        (a split names its destinations, their weights and the one this request would
        take). Sync; called without an instance, nothing is sent anywhere.

        :param config: the entry's validated config with defaults filled in.
        :param request: the request being explained (headers, path, host).
        :param context: where the instance would live.
        :returns: an :class:`Explanation`, or ``None`` to say nothing.
        """
        return None

    def on_request(self, request: Request) -> Response | None:
        """Request hook: called once per request, in chain order, after the route
        matched and before an upstream is chosen. Sync or async.

        :param request: the request; headers, path and ``cluster`` may be changed, and
            ``request.stash`` keeps per-request state between hooks.
        :returns: ``None`` to continue, or a :class:`Response` to answer the client
            directly (the chain stops, no upstream is contacted, no response hook runs;
            :meth:`on_complete` still does). The request is logged with flag ``PA``
            (:attr:`ResponseFlag.POLICY_ANSWERED`) after any flag the policy added with
            :meth:`Request.add_flag`.
        """
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[EndpointView]
    ) -> Sequence[EndpointView]:
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
            replayable, the route timeout must allow it -- see
            :meth:`Request.time_left` -- and no byte may have reached the client yet).
        """

    def on_complete(
        self, request: Request, response: Response | None, flag: ResponseFlag | None
    ) -> None:
        """Completion hook: called once when the request is finished and logged, in
        reverse chain order, after the last :meth:`on_response`. Sync only. For tracing
        and metrics: the response hook cannot know which attempt is the last.

        :param request: the request (``request.log`` has been written to the access log).
        :param response: the response head sent to the client, or ``None`` when none was
            (the client went away, or the request failed before any response).
        :param flag: the first response flag of the request as a whole (``UF``, ``UT``,
            ``UH``, ``DC``...), or ``None``.
        """

    def waiting_for(self) -> str | None:
        """Readiness hook: what this policy still waits for before it can serve (an
        mTLS policy: its first certificate), or ``None`` when it is ready. Sync; called
        on each ``/ready``. The admin API's ``/ready`` answers ``503`` with the reason
        until every policy of the applied config is ready, as Istio's agent is not ready
        before its certificate is served.
        """
        return None

    async def close(self) -> None:
        """Called when the config this instance belongs to has been replaced and its
        last request has finished. Async. Release background tasks here."""
