"""A sidecar's own HTTP endpoints (the admin API, the status port), served by the data
path's client connections, as Envoy serves its admin interface with its own HTTP stack.

uvicorn and Starlette served them before: for a handful of GET routes they cost every
sidecar ~5 MiB of resident memory (issue 19). Here a request gets the data path's
checks (llhttp's strict parsing, its header limits and path normalisation, the header
and idle timeouts), and the answers are Starlette's: 404 for an unknown path, 405 with
``Allow`` for a method other than GET or HEAD, 500 when an endpoint fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sidemesh.datapath.body import RequestBody
from sidemesh.datapath.downstream import DownstreamConnection
from sidemesh.datapath.exchange import ClientSide
from sidemesh.datapath.hygiene import Sweeper
from sidemesh.datapath.messages import Headers, Request, Response
from sidemesh.datapath.model import ConnectionLimits

__all__ = ["LIMITS", "Endpoint", "EndpointServer", "bytes_answer"]

log = logging.getLogger("sidemesh")

#: one endpoint: its answer to a GET of its path.
Endpoint = Callable[[], Awaitable[Response]]
#: a head must come within 10 s (the data path's default); a kept-alive connection idle
#: for 5 s is closed, as uvicorn's keep-alive timeout did.
LIMITS = ConnectionLimits(request_headers_timeout=10.0, idle_timeout=5.0)
_METHODS = ("GET", "HEAD")
#: how long stop() waits for the listening socket to close.
_CLOSE_TIMEOUT = 5.0


def bytes_answer(body: bytes, content_type: str, status: int = 200) -> Response:
    """An answer of ``body`` as ``content_type`` (the metrics' text format)."""
    return Response(status, Headers([("content-type", content_type)]), body)


class EndpointServer:
    """Serves ``routes`` (path to endpoint) on ``host:port``; ``what`` names it in errors
    and in the requests' ``listener``."""

    def __init__(self, routes: Mapping[str, Endpoint], host: str, port: int, what: str) -> None:
        self.routes = dict(routes)
        self.host = host
        self.what = what
        self._port = port
        self._connections: set[DownstreamConnection] = set()
        self._sweeper = Sweeper(self._connections)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen.

        :raises OSError: naming the address when it cannot listen there.
        """
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._accept, self.host, self._port, reuse_address=True
            )
        except OSError:
            raise OSError(f"{self.what} cannot listen on {self.host}:{self._port}") from None

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose for port 0); 0 when stopped."""
        # Any: uvloop gives the sockets as a list where the stub says tuple.
        server: Any = self._server
        return int(server.sockets[0].getsockname()[1]) if server and server.sockets else 0

    async def stop(self) -> None:
        """Stop listening and close every connection (an answer in progress is cut)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            conn.close()
        self._sweeper.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT)

    def _accept(self) -> DownstreamConnection:
        conn = DownstreamConnection(
            self._handle, self.what, "http", self._connections.discard, limits=LIMITS
        )
        self._connections.add(conn)
        self._sweeper.watch(asyncio.get_running_loop())
        return conn

    async def _handle(self, conn: ClientSide, request: Request, body: RequestBody) -> None:
        endpoint = self.routes.get(request.path_only)
        if endpoint is None:
            answer = Response.text(404, "Not Found")
        elif request.method not in _METHODS:
            answer = Response.text(405, "Method Not Allowed", [("allow", ", ".join(_METHODS))])
        else:
            try:
                answer = await endpoint()
            except Exception as exc:  # the operator's log has it; the client, a 500
                log.error("%s: %s failed: %s: %s", self.what, request.path_only,
                          type(exc).__name__, exc)
                answer = Response.text(500, "Internal Server Error")
        if not conn.closed:
            conn.write_simple(answer, request.method == "HEAD")
