"""The data path: route -> request hooks -> attempts -> response to the client.

The core owns the attempt loop; policies only decide (a retry policy calls
``attempt.retry()``). An attempt can be repeated only while the request body is
replayable, the route's timeout leaves room, and no response byte has reached the
client.

This is the per-request path, so it is shaped for speed as well as reading: three
coroutine levels (request, attempt loop, exchange), no ``asyncio.timeout`` blocks (a
deadline watched by the pool's per-loop sweeper), and no future at all for a response
that arrives whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from sidemesh.datapath.body import NO_BODY, RequestBody
from sidemesh.datapath.codec import (
    FORWARDED,
    expects_continue,
    strip_hop_by_hop,
    upstream_framing,
)
from sidemesh.datapath.connections import ConnectionSetup
from sidemesh.datapath.exchange import ClientSide, UpstreamError, UpstreamExchange
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.grpc import grpc_reply, grpc_timeout, is_grpc
from sidemesh.datapath.messages import (
    OVERFLOW_TEXT,
    OVERLOADED_HEADER,
    Attempt,
    Headers,
    Request,
    Response,
)
from sidemesh.datapath.mirror import MIRROR_BUFFER, send_mirrors
from sidemesh.datapath.outcome import Outcome
from sidemesh.datapath.pool import ConnectionPool
from sidemesh.datapath.request_ids import request_id
from sidemesh.datapath.tunnel import offer_upgrade, refuse_upgrade, tunnel

if TYPE_CHECKING:
    from sidemesh.datapath.cluster import Cluster, Endpoint
    from sidemesh.datapath.snapshot import CompiledRoute, Snapshot

__all__ = ["FAILURE_STATUS", "Forwarder", "Outcome"]

_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "
#: the status and text (Envoy's wording) the client gets for a failure before any head.
FAILURE_STATUS = {
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE: (503, _RESET + "connection failure"),
    ResponseFlag.UPSTREAM_CONNECTION_TERMINATION: (503, _RESET + "connection termination"),
    ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: (504, "upstream request timeout"),
    ResponseFlag.NO_HEALTHY_UPSTREAM: (503, "no healthy upstream"),
    ResponseFlag.UPSTREAM_PROTOCOL_ERROR: (502, "upstream sent an invalid response"),
    ResponseFlag.UPSTREAM_OVERFLOW: (503, OVERFLOW_TEXT),
    ResponseFlag.NO_CLUSTER_FOUND: (503, "cluster not found"),
}
OVERLOADED = (OVERLOADED_HEADER, "true")
#: the protocols offered by ALPN on a TLS connection to a cluster, by its ``protocol``.
ALPN: dict[str, tuple[str, ...]] = {"http1": (), "http2": ("h2",), "auto": ("h2", "http/1.1")}


class Forwarder:
    """Sends one request through a compiled route and answers the client."""

    def __init__(self, on_done: Callable[[Request, Outcome, Snapshot], None]) -> None:
        self._on_done = on_done

    async def handle(
        self,
        conn: ClientSide,
        request: Request,
        body: RequestBody,
        snapshot: Snapshot,
        route: CompiledRoute | None,
    ) -> None:
        outcome = Outcome()
        request.start = time.monotonic()
        headers = request.headers
        request.request_id = request._core.get("x-request-id") or ""
        if not request.request_id:
            request.request_id = request_id()
            headers._add_trusted("x-request-id", request.request_id)
        try:
            if route is None:
                outcome.flags.append(ResponseFlag.NO_ROUTE_FOUND)
                payload = {"error": "no route", "listener": request.listener}
                payload.update(host=request.host, path=request.path)
                self._answer(conn, request, Response.json(404, payload), outcome)
                if "upgrade" in request._core:
                    refuse_upgrade(conn, request)
            else:
                await self._forward(conn, request, body, snapshot, route, outcome)
        except Exception as exc:  # a policy raised: never a traceback to the client
            if not conn.response_started:
                outcome.flags.append(ResponseFlag.POLICY_ERROR)
                # The exception's text is for the operator's log only: it may hold
                # internals (paths, addresses, secrets) a client must not see.
                payload = {"error": "internal error", "request_id": request.request_id}
                self._answer(conn, request, Response.json(500, payload), outcome)
            else:
                conn.abort()
            request.log["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            outcome.bytes_received += body.size  # a tunnel counted its own bytes
            outcome.bytes_sent = conn.bytes_sent
            outcome.request_end = request.start if body is NO_BODY else body.ended
            self._on_done(request, outcome, snapshot)
            if route is not None:
                if request.mirrors:
                    send_mirrors(request, body, snapshot, route.timeout or 15.0)
                self._complete(route, request, outcome)

    @staticmethod
    def _complete(route: CompiledRoute, request: Request, outcome: Outcome) -> None:
        flag = outcome.flags[0] if outcome.flags else None
        for hook, _ in route.chain.complete:
            try:
                hook(request, outcome.response, flag)
            except Exception as exc:  # the client has its answer; a failing hook only logs
                request.log.setdefault("hook_errors", []).append(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _answer(
        conn: ClientSide, request: Request, response: Response, outcome: Outcome
    ) -> None:
        if is_grpc(request._core.get("content-type")):
            response = grpc_reply(
                response, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT in outcome.flags
            )
        outcome.status = response.status
        outcome.response = response
        if not conn.closed:
            conn.write_simple(response, request.method == "HEAD")

    # the request -------------------------------------------------------------------
    @staticmethod
    def _upstream_headers(conn: ClientSide, request: Request, body: RequestBody) -> None:
        core = request._core
        if not body.eof and expects_continue(core.get("expect")):
            # As Envoy does by default: answer 100 Continue here, not upstream.
            conn.continue_100()
        client_ip = conn.info.client_address.rsplit(":", 1)[0]
        xff = core.get("x-forwarded-for")
        # Fields a Connection header named are gone already (downstream.py).
        items = strip_hop_by_hop(request.headers, FORWARDED, False)
        items.append(("x-forwarded-for", f"{xff}, {client_ip}" if xff else client_ip))
        items.append(("x-forwarded-proto", request.scheme))
        framing = upstream_framing(body.chunked, core.get("content-length"))
        if framing is not None:
            items.append(framing)
        request.headers = Headers._trusted(items)

    async def _forward(
        self,
        conn: ClientSide,
        request: Request,
        body: RequestBody,
        snapshot: Snapshot,
        route: CompiledRoute,
        outcome: Outcome,
    ) -> None:
        request.route = route.name
        request.cluster = route.cluster
        if route.timeout:
            request.deadline = request.start + route.timeout
        allowed = grpc_timeout(request._core.get("grpc-timeout"))
        if allowed is not None:
            # A gRPC client's deadline ends the request too, whichever comes first.
            ends = request.start + allowed
            if request.deadline is None or ends < request.deadline:
                request.deadline = ends
        self._upstream_headers(conn, request, body)
        if "upgrade" in request._core:
            offer_upgrade(conn, request, route.config.upgrades)
        chain = route.chain
        for hook, is_async in chain.request:
            answer = await hook(request) if is_async else hook(request)
            if answer is not None:
                # A policy's own flags (UO from a circuit breaker) come first.
                outcome.flags.extend(request.flags)
                outcome.flags.append(ResponseFlag.POLICY_ANSWERED)
                self._answer(conn, request, answer, outcome)
                return
        limit = request.retry_buffer_limit
        body.set_limit(max(limit, MIRROR_BUFFER) if request.mirrors else limit)
        cluster = snapshot.clusters.get(request.cluster)
        if cluster is None:
            status, message = FAILURE_STATUS[ResponseFlag.NO_CLUSTER_FOUND]
            outcome.flags.append(ResponseFlag.NO_CLUSTER_FOUND)
            self._answer(conn, request, Response.text(status, message), outcome)
            return
        deadline = request.deadline
        cluster.active_requests += 1
        try:
            attempt, upstream = await self._attempts(conn, request, body, route, cluster, deadline)
            if request.flags:
                outcome.flags.extend(request.flags)
            endpoint = attempt.endpoint
            if endpoint is not None:
                outcome.upstream = endpoint.address
            response = attempt.response
            if response is None or upstream is None:
                self._fail(conn, request, attempt, outcome)
                return
            outcome.response_at = time.monotonic()
            outcome.upstream_protocol = upstream.protocol
            try:
                if response.status == 101:  # the only answer that can open a tunnel
                    if not await tunnel(conn, request, response, upstream, outcome):
                        attempt.flag = ResponseFlag.UPSTREAM_PROTOCOL_ERROR
                        self._fail(conn, request, attempt, outcome)
                elif not self._start_stream(conn, response, request, upstream, outcome):
                    await self._finish_stream(conn, response, upstream, outcome)
            finally:
                if endpoint is not None:
                    cast("Endpoint", endpoint).active_requests -= 1
        finally:
            cluster.active_requests -= 1

    def _fail(
        self, conn: ClientSide, request: Request, attempt: Attempt, outcome: Outcome
    ) -> None:
        flag = attempt.flag or ResponseFlag.UPSTREAM_CONNECTION_FAILURE
        outcome.flags.append(flag)
        if flag == ResponseFlag.UPSTREAM_CONNECTION_FAILURE:
            outcome.failure = attempt.error or ""
        status, message = FAILURE_STATUS.get(flag, (503, attempt.error or "upstream error"))
        headers = [OVERLOADED] if flag == ResponseFlag.UPSTREAM_OVERFLOW else []
        self._answer(conn, request, Response.text(status, message, headers), outcome)

    # attempts ----------------------------------------------------------------------
    async def _attempts(
        self,
        conn: ClientSide,
        request: Request,
        body: RequestBody,
        route: CompiledRoute,
        cluster: Cluster,
        deadline: float | None,
    ) -> tuple[Attempt, UpstreamExchange | None]:
        chain = route.chain
        number = 0
        while True:
            number += 1
            request.attempts = number
            candidates = cluster.available()
            for select in chain.select:
                candidates = select(request, candidates)
            upstream: UpstreamExchange | None = None
            if not candidates:
                flag = ResponseFlag.NO_HEALTHY_UPSTREAM
                attempt = Attempt(number, None, flag=flag, error="no healthy upstream")
            else:
                # Policies narrow the cluster's own endpoints: these are the core's objects.
                endpoint = cluster.pick(cast("Sequence[Endpoint]", candidates))
                request.tried.append(endpoint)
                attempt, upstream = await self._exchange(
                    request, body, route, cluster, endpoint, deadline
                )
            for hook, is_async in chain.response:
                if is_async:
                    await hook(request, attempt)
                else:
                    hook(request, attempt)
            if not attempt.retry_requested or conn.closed:
                return attempt, upstream
            wait = attempt.retry_delay
            room = deadline - time.monotonic() if deadline is not None else None
            # The route deadline ends the request whatever a policy asks.
            if not body.replayable or (room is not None and room <= max(wait, 0.001)):
                request.add_flag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
                return attempt, upstream
            if upstream is not None:
                upstream.close()
                if attempt.endpoint is not None:
                    cast("Endpoint", attempt.endpoint).active_requests -= 1
            if wait > 0:
                await asyncio.sleep(wait)

    async def _exchange(
        self,
        request: Request,
        body: RequestBody,
        route: CompiledRoute,
        cluster: Cluster,
        endpoint: Endpoint,
        deadline: float | None,
    ) -> tuple[Attempt, UpstreamExchange | None]:
        """One attempt: a connection, the request out, the response head in."""
        # Durations from the monotonic clock: uvloop's loop.time() moves in whole
        # milliseconds, too coarse for attempt durations (and the spans made of them).
        start = time.monotonic()
        limit = request.per_try_timeout
        if deadline is not None:
            left = deadline - start
            limit = left if limit is None else min(limit, left)
        pool = endpoint.pools.get(route.chain.pool_key) or self._new_pool(
            request, route, cluster, endpoint
        )
        endpoint.active_requests += 1
        has_body = body.chunked or not body.eof or body.size > 0
        upstream: UpstreamExchange | None = None
        try:
            for fresh in (False, True):
                upstream = None if fresh else pool.take()
                budget = limit
                if upstream is None:
                    upstream = await pool.acquire(
                        cluster.connect_timeout, fresh=fresh, limit=cluster.connections
                    )
                    if limit is not None:
                        # Connecting (or waiting for a connection) spends the same budget.
                        budget = max(0.0, limit - (time.monotonic() - start))
                head_future = upstream.start(
                    request, body if has_body else None, request.method == "HEAD", budget
                )
                try:
                    status, raw_headers, _, _ = await head_future
                    break
                except UpstreamError as exc:
                    upstream.close()
                    # A kept-alive connection the upstream closed just as it was reused:
                    # try a fresh one once; nothing reached the upstream application.
                    if (
                        exc.flag != ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
                        or not upstream.reused
                        or fresh
                        or not body.replayable
                    ):
                        raise
        except (UpstreamError, TimeoutError) as exc:
            if upstream is not None:
                upstream.close()
            endpoint.active_requests -= 1
            timeout = ResponseFlag.UPSTREAM_REQUEST_TIMEOUT
            flag = exc.flag if isinstance(exc, UpstreamError) else timeout
            error = str(exc)
            if flag == timeout:
                final = deadline is not None and time.monotonic() >= deadline - 0.001
                error = "route timeout" if final else "per-try timeout"
            failed = Attempt(request.attempts, endpoint, flag=flag, error=error)
            failed.duration = time.monotonic() - start
            return failed, None
        except BaseException:
            if upstream is not None:
                upstream.close()
            endpoint.active_requests -= 1
            raise
        response = Response._from_upstream(status, raw_headers)
        duration = time.monotonic() - start
        return Attempt(request.attempts, endpoint, response, duration=duration), upstream

    @staticmethod
    def _new_pool(
        request: Request, route: CompiledRoute, cluster: Cluster, endpoint: Endpoint
    ) -> ConnectionPool:
        chain = route.chain
        key = chain.pool_key
        setup = None
        if key is not None:
            alpn = ALPN[cluster.config.protocol]

            def setup() -> ConnectionSetup:
                return chain.connection_setup(
                    ConnectionSetup(
                        "upstream",
                        request.listener,
                        cluster=cluster,
                        endpoint=endpoint,
                        alpn_protocols=alpn,
                    )
                )

        pool = endpoint.pools[key] = cluster.new_pool(endpoint, setup)
        return pool

    # the response ------------------------------------------------------------------
    @staticmethod
    def _start_stream(
        conn: ClientSide,
        response: Response,
        request: Request,
        upstream: UpstreamExchange,
        outcome: Outcome,
    ) -> bool:
        """Send the response head and what body has arrived. Returns whether the
        exchange is over (the common case for small responses: nothing to await)."""
        outcome.status = response.status
        outcome.response = response
        if conn.closed:
            upstream.close()
            outcome.flags.append(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            return True
        conn.begin_response(request, response)
        upstream.attach(conn)
        if not upstream.finished():
            conn.flush_head()
            conn.set_upstream(upstream)
            return False
        Forwarder._end_stream(conn, response, upstream)
        return True

    @staticmethod
    def _end_stream(conn: ClientSide, response: Response, upstream: UpstreamExchange) -> None:
        trailers = upstream.trailers
        if trailers is not None:
            response._set_trailers(trailers)
        conn.end_response(trailers)
        if upstream.body_done():
            upstream.release()
        else:
            upstream.close()

    async def _finish_stream(
        self, conn: ClientSide, response: Response, upstream: UpstreamExchange, outcome: Outcome
    ) -> None:
        try:
            await upstream.done_future()
        except UpstreamError as exc:
            # The attempt's deadline bounds the body too (route or per-try timeout).
            if conn.closed:
                flag = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
            elif exc.flag == ResponseFlag.UPSTREAM_REQUEST_TIMEOUT:
                flag = exc.flag
            else:
                flag = ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
            outcome.flags.append(flag)
            upstream.close()
            conn.abort()
            return
        finally:
            conn.set_upstream(None)
        self._end_stream(conn, response, upstream)
