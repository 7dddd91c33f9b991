"""The data path: route -> request hooks -> attempts -> response to the client.

The core owns the attempt loop; policies only decide (a retry policy calls
``attempt.retry()``). An attempt can be repeated only while the request body is
replayable, the route's timeout leaves room, and no response byte has reached the
client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .body import BodyNotReplayable, RequestBody
from .hookspecs import ConnectionSetup
from .messages import Attempt, Headers, Request, Response
from .pool import ConnectionPool, UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from .http1 import DownstreamConnection
    from .snapshot import CompiledRoute, Snapshot
    from .upstream import Cluster, Endpoint

__all__ = ["Forwarder", "Outcome"]

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "trailer", "upgrade", "http2-settings", "content-length", "expect",
    }
)  # fmt: skip

#: what the client is told for a failure before any response head (Envoy's wording).
_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "
FAILURE_STATUS = {
    "UF": (503, _RESET + "connection failure"),
    "UC": (503, _RESET + "connection termination"),
    "UT": (504, "upstream request timeout"),
    "UH": (503, "no healthy upstream"),
    "UPE": (502, "upstream sent an invalid response"),
    "UO": (503, _RESET + "overflow"),
    "NC": (503, "cluster not found"),
}  # fmt: skip
#: marks an answer the proxy gave because a limit was reached (Envoy: x-envoy-overloaded).
OVERLOADED = ("x-sidemesh-overloaded", "true")


MIRROR_BUFFER = 1024 * 1024


def _request_id() -> str:
    """A random (version 4) UUID, as Envoy generates for ``x-request-id``; formatted
    by hand because ``uuid.uuid4()`` costs several times more per request."""
    h = "%032x" % ((random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62)) | (4 << 76) | (2 << 62))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Outcome:
    """What happened to one request, for the access log and metrics."""

    __slots__ = ("flags", "response", "status", "upstream")

    def __init__(self) -> None:
        self.status = 0
        #: the response head sent to the client, if one was.
        self.response: Response | None = None
        self.flags: list[str] = []
        self.upstream = ""


FORWARDED = HOP_BY_HOP | {"x-forwarded-for", "x-forwarded-proto"}


def _strip_hop_by_hop(headers: Headers, drop: frozenset[str] = HOP_BY_HOP) -> list[tuple[str, str]]:
    connection = headers.get("connection")
    if connection is None:
        return [(k, v) for k, v in headers if k not in drop]
    extra = {t.strip().lower() for v in headers.get_all("connection") for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in drop and k not in extra]


class _ChunkedSink:
    __slots__ = ("_conn",)

    def __init__(self, conn: DownstreamConnection) -> None:
        self._conn = conn

    def write_body(self, data: bytes) -> None:
        if data:
            self._conn.write_body(b"%x\r\n%s\r\n" % (len(data), data))

    def pause_source(self) -> bool:
        return self._conn.pause_source()


class Forwarder:
    """Sends one request through a compiled route and answers the client."""

    def __init__(self, on_done: Callable[[Request, Outcome], None]) -> None:
        self._on_done = on_done

    # entry point -------------------------------------------------------------------
    async def handle(
        self,
        conn: DownstreamConnection,
        request: Request,
        body: RequestBody,
        snapshot: Snapshot,
        route: CompiledRoute | None,
    ) -> None:
        outcome = Outcome()
        request.start = time.monotonic()
        headers = request.headers
        request.request_id = headers.get("x-request-id") or ""
        if not request.request_id:
            request.request_id = _request_id()
            headers.add("x-request-id", request.request_id)
        try:
            if route is None:
                outcome.flags.append("NR")
                self._answer(
                    conn,
                    Response.json(
                        404,
                        {
                            "error": "no route",
                            "listener": request.listener,
                            "host": request.host,
                            "path": request.path,
                        },
                    ),
                    outcome,
                )
                return
            await self._route(conn, request, body, snapshot, route, outcome)
        except Exception as exc:  # a policy raised: never a traceback to the client
            if not conn.response_started:
                outcome.flags.append("PE")
                self._answer(
                    conn,
                    Response.json(500, {"error": "plugin error", "message": str(exc)}),
                    outcome,
                )
            else:
                conn.keep_alive = False
            request.log["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self._on_done(request, outcome)
            if request.mirrors:
                self._mirror(request, body, snapshot, route)
            if route is not None:
                self._complete(route, request, outcome)

    def _mirror(
        self, request: Request, body: RequestBody, snapshot: Snapshot, route: CompiledRoute | None
    ) -> None:
        payload = body.kept()
        if payload is None:
            request.log["mirror"] = "skipped: body not buffered"
            return
        headers = Headers._trusted(
            [(k, v) for k, v in request.headers if k not in ("content-length", "transfer-encoding")]
        )
        headers.set("host", f"{request.host.split(':')[0]}-shadow")
        if payload or request.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
            headers.set("content-length", str(len(payload)))
        head = (
            f"{request.method} {request.path} HTTP/1.1\r\n".encode("latin-1")
            + headers.encode()
            + b"\r\n"
        )
        timeout = (route.timeout if route is not None else None) or 15.0
        loop = asyncio.get_running_loop()
        for cluster_name, subset in request.mirrors:
            cluster = snapshot.clusters.get(cluster_name)
            if cluster is None:
                continue
            candidates = cluster.subsets.get(subset, []) if subset else cluster.available()
            if candidates:
                task = loop.create_task(
                    _shadow(cluster.pick(candidates), head + payload, cluster, timeout)
                )
                _SHADOWS.add(task)
                task.add_done_callback(_SHADOWS.discard)

    @staticmethod
    def _complete(route: CompiledRoute, request: Request, outcome: Outcome) -> None:
        flag = outcome.flags[0] if outcome.flags else None
        for hook, _ in route.chain.complete:
            try:
                hook(request, outcome.response, flag)
            except Exception as exc:  # the client has its answer; a failing hook only logs
                request.log.setdefault("hook_errors", []).append(f"{type(exc).__name__}: {exc}")

    def _answer(self, conn: DownstreamConnection, response: Response, outcome: Outcome) -> None:
        outcome.status = response.status
        outcome.response = response
        if not conn.closed:
            conn.write_simple(response)

    # routing -----------------------------------------------------------------------
    async def _route(
        self,
        conn: DownstreamConnection,
        request: Request,
        body: RequestBody,
        snapshot: Snapshot,
        route: CompiledRoute,
        outcome: Outcome,
    ) -> None:
        request.route = route.name
        request.cluster = route.cluster
        headers = request.headers
        if (headers.get("expect") or "").lower() == "100-continue" and not body.eof:
            # As Envoy does by default: answer 100 Continue here, not upstream.
            conn.write_body(b"HTTP/1.1 100 Continue\r\n\r\n")
        client_ip = conn.info.client_address.rsplit(":", 1)[0]
        xff = headers.get("x-forwarded-for")
        items = _strip_hop_by_hop(headers, FORWARDED)
        items.append(("x-forwarded-for", f"{xff}, {client_ip}" if xff else client_ip))
        items.append(("x-forwarded-proto", request.scheme))
        forwarded = Headers._trusted(items)
        if body.chunked:
            forwarded.add("transfer-encoding", "chunked")
        elif (length := headers.get("content-length")) is not None:
            forwarded.add("content-length", str(int(length)))
        request.headers = forwarded

        chain = route.chain
        for hook, is_async in chain.request:
            answer = await hook(request) if is_async else hook(request)
            if answer is not None:
                # A policy's own flags (UO from a circuit breaker) come first.
                outcome.flags.extend(request.log.get("response_flags", ()))
                outcome.flags.append("DI")
                self._answer(conn, answer, outcome)
                return
        body.set_limit(
            max(request.retry_buffer_limit, MIRROR_BUFFER)
            if request.mirrors
            else request.retry_buffer_limit
        )
        cluster = snapshot.clusters.get(request.cluster)
        if cluster is None:
            status, message = FAILURE_STATUS["NC"]
            outcome.flags.append("NC")
            self._answer(conn, Response.text(status, message), outcome)
            return
        timeout = route.timeout
        deadline = request.start + timeout if timeout else None
        cluster.active_requests += 1
        try:
            await self._attempts(conn, request, body, route, cluster, deadline, outcome)
        finally:
            cluster.active_requests -= 1

    # attempts ----------------------------------------------------------------------
    async def _attempts(
        self,
        conn: DownstreamConnection,
        request: Request,
        body: RequestBody,
        route: CompiledRoute,
        cluster: Cluster,
        deadline: float | None,
        outcome: Outcome,
    ) -> None:
        chain = route.chain
        number = 0
        while True:
            number += 1
            request.attempts = number
            candidates = cluster.available()
            for select in chain.select:
                candidates = select(request, candidates)
            upstream: UpstreamConnection | None = None
            if not candidates:
                attempt = Attempt(number, None, flag="UH", error="no healthy upstream")
            else:
                endpoint = cluster.pick(candidates)
                request.tried.append(endpoint)
                attempt, upstream = await self._try(
                    request, body, route, cluster, endpoint, deadline
                )
            for hook, is_async in chain.response:
                if is_async:
                    await hook(request, attempt)
                else:
                    hook(request, attempt)
            if attempt.retry_requested and not conn.closed:
                wait = attempt.retry_delay
                room = deadline - time.monotonic() if deadline is not None else None
                if body.replayable and (room is None or room > wait) and attempt.flag != "UT!":
                    if upstream is not None:
                        upstream.close()
                        if attempt.endpoint is not None:
                            attempt.endpoint.active_requests -= 1
                    if wait > 0:
                        await asyncio.sleep(wait)
                    continue
                request.log.setdefault("response_flags", []).append("URX")
            break
        await self._deliver(conn, request, attempt, upstream, deadline, outcome)

    async def _try(
        self,
        request: Request,
        body: RequestBody,
        route: CompiledRoute,
        cluster: Cluster,
        endpoint: Endpoint,
        deadline: float | None,
    ) -> tuple[Attempt, UpstreamConnection | None]:
        start = time.monotonic()
        number = request.attempts
        limit = request.per_try_timeout
        if deadline is not None:
            left = deadline - start
            limit = left if limit is None else min(limit, left)
        chain = route.chain
        key = chain.pool_key
        pool = endpoint.pools.get(key)
        if pool is None:
            setup = None
            if key is not None:

                def setup() -> ConnectionSetup:
                    return chain.connection_setup(
                        ConnectionSetup(
                            "upstream", request.listener, cluster=cluster, endpoint=endpoint
                        )
                    )

            pool = endpoint.pools[key] = ConnectionPool(endpoint.host, endpoint.port, setup)
        endpoint.active_requests += 1
        upstream: UpstreamConnection | None = None
        expires = None if limit is None else asyncio.get_running_loop().time() + limit
        try:
            upstream, head = await self._send(request, body, pool, cluster, expires)
            status, raw_headers, _, _ = head
        except (TimeoutError, UpstreamError) as exc:
            if upstream is not None:
                upstream.close()
            endpoint.active_requests -= 1
            if isinstance(exc, TimeoutError) or exc.flag == "UT":
                final = deadline is not None and time.monotonic() >= deadline - 0.001
                # "UT!" marks the route deadline: it ends the request, no more attempts.
                flag = "UT!" if final else "UT"
                what = "route timeout" if final else "per-try timeout"
                attempt = Attempt(number, endpoint, flag=flag, error=what, duration=limit or 0.0)
                return attempt, None
            attempt = Attempt(
                number, endpoint, flag=exc.flag, error=str(exc), duration=time.monotonic() - start
            )
            return attempt, None
        response = Response(status, Headers._trusted(raw_headers))
        response.reason = ""
        attempt = Attempt(number, endpoint, response, duration=time.monotonic() - start)
        return attempt, upstream

    async def _send(
        self,
        request: Request,
        body: RequestBody,
        pool: ConnectionPool,
        cluster: Cluster,
        expires: float | None,
    ) -> tuple[UpstreamConnection, tuple[int, list[tuple[str, str]], bool, bool]]:
        head = (
            f"{request.method} {request.path} HTTP/1.1\r\n".encode("latin-1")
            + request.headers.encode()
            + b"\r\n"
        )
        head_only = request.method == "HEAD"
        has_body = body.chunked or "content-length" in request.headers
        for fresh in (False, True):
            upstream = await pool.acquire(
                cluster.connect_timeout, fresh=fresh, limit=cluster.connections
            )
            reused = upstream.reused
            head_future, _ = upstream.start(head, head_only, expires)
            if has_body:
                upstream.body_task = asyncio.get_running_loop().create_task(
                    self._pump(upstream, body)
                )
            try:
                return upstream, await head_future
            except UpstreamError as exc:
                upstream.close()
                # A kept-alive connection the upstream closed just as we reused it: try a
                # fresh one once; nothing reached the upstream application.
                if exc.flag == "UC" and reused and body.replayable and not fresh:
                    continue
                raise
            except BaseException:
                upstream.close()
                raise
        raise AssertionError("unreachable")

    async def _pump(self, upstream: UpstreamConnection, body: RequestBody) -> None:
        try:
            async for chunk in body.chunks():
                if body.chunked:
                    await upstream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    await upstream.write(chunk)
            if body.chunked:
                await upstream.write(b"0\r\n\r\n")
            upstream.body_sent = True
        except (UpstreamError, BodyNotReplayable):
            upstream.close()

    # delivery ----------------------------------------------------------------------
    async def _deliver(
        self,
        conn: DownstreamConnection,
        request: Request,
        attempt: Attempt,
        upstream: UpstreamConnection | None,
        deadline: float | None,
        outcome: Outcome,
    ) -> None:
        extra = request.log.get("response_flags")
        if extra:
            outcome.flags.extend(extra)
        if attempt.endpoint is not None:
            outcome.upstream = attempt.endpoint.address
        response = attempt.response
        if response is None or upstream is None:
            flag = (attempt.flag or "UF").rstrip("!")
            outcome.flags.append(flag)
            if response is None:
                status, message = FAILURE_STATUS.get(flag, (503, attempt.error or "upstream error"))
                response = Response.text(status, message, [OVERLOADED] if flag == "UO" else ())
            self._answer(conn, response, outcome)
            return
        endpoint = attempt.endpoint
        try:
            await self._stream(conn, request, response, upstream, deadline, outcome)
        finally:
            if endpoint is not None:
                endpoint.active_requests -= 1

    async def _stream(
        self,
        conn: DownstreamConnection,
        request: Request,
        response: Response,
        upstream: UpstreamConnection,
        deadline: float | None,
        outcome: Outcome,
    ) -> None:
        outcome.status = response.status
        outcome.response = response
        upstream_headers = response.headers
        length = upstream_headers.get("content-length")
        headers = Headers._trusted(_strip_hop_by_hop(upstream_headers))
        no_body = request.method == "HEAD" or response.status in (204, 304)
        chunked = False
        if length is not None:
            headers.add("content-length", length)
        elif not no_body:
            if request.version == "1.1":
                chunked = True
            else:
                conn.keep_alive = False
        if conn.closed:
            upstream.close()
            outcome.flags.append("DC")
            return
        conn.start_response(response.status, headers, response.reason, chunked=chunked)
        sink = _ChunkedSink(conn) if chunked else conn
        conn.set_upstream_resume(upstream.resume)
        upstream.attach(sink)
        done = upstream.done_future()
        try:
            if not done.done():
                conn.flush_head()
            await done
        except UpstreamError as exc:
            # The attempt's timer bounds the body too (route or per-try timeout).
            outcome.flags.append("UT" if exc.flag == "UT" else "UC")
            upstream.close()
            conn.keep_alive = False
            return
        finally:
            conn.set_upstream_resume(None)
        if chunked:
            conn.write_body(b"0\r\n\r\n")
        conn.finish_response()
        if not upstream.body_done():
            upstream.close()
        else:
            upstream.release()


#: shadow requests in flight (a reference keeps each task alive until it is done).
_SHADOWS: set[asyncio.Task[None]] = set()


async def _shadow(endpoint: Endpoint, data: bytes, cluster: Cluster, timeout: float) -> None:
    """Send a mirrored request and read its answer away; every failure is swallowed."""
    pool = endpoint.pools.get(None)
    if pool is None:
        pool = endpoint.pools[None] = ConnectionPool(endpoint.host, endpoint.port)
    upstream: UpstreamConnection | None = None
    outcome = "ok"
    try:
        async with asyncio.timeout(timeout):
            upstream = await pool.acquire(cluster.connect_timeout)
            head, done = upstream.start(data, False)
            upstream.attach(_DISCARD)
            await head
            await done
        upstream.release()
    except (TimeoutError, UpstreamError, OSError):
        outcome = "failed"
        if upstream is not None:
            upstream.close()
    endpoint.stats[f"mirror_{outcome}"] = endpoint.stats.get(f"mirror_{outcome}", 0) + 1


class _Discard:
    def write_body(self, data: bytes) -> None:
        return None

    def pause_source(self) -> bool:
        return False


_DISCARD = _Discard()
