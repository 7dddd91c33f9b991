"""The server of a sidecar's admin API and status port (process/endpoints.py), through
real sockets: Starlette's answers (404, 405, HEAD, 500), kept-alive connections, the
data path's request checks, and its idle timeout."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from sidemesh.datapath.messages import Response
from sidemesh.process.endpoints import LIMITS, EndpointServer, bytes_answer
from sidemesh.testing import BackgroundLoop, raw_exchange

IO_TIMEOUT = 5.0


async def _hello() -> Response:
    return Response.json(200, {"hello": "world"})


async def _metrics() -> Response:
    return bytes_answer(b"up 1\n", "text/plain; version=0.0.4; charset=utf-8")


async def _broken() -> Response:
    raise RuntimeError("secret internals")


@pytest.fixture(scope="module")
def server() -> Iterator[EndpointServer]:
    loop = BackgroundLoop()
    routes = {"/hello": _hello, "/metrics": _metrics, "/broken": _broken}
    endpoints = EndpointServer(routes, "127.0.0.1", 0, "test endpoints")
    loop.run(endpoints.start())
    try:
        yield endpoints
    finally:
        loop.run(endpoints.stop())
        loop.close()


def test_routes_answer_get_and_head_on_one_kept_alive_connection(server: EndpointServer) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=IO_TIMEOUT) as client:
        hello = client.get("/hello?verbose=1")  # a query string does not change the route
        assert hello.status_code == 200 and hello.json() == {"hello": "world"}
        assert hello.headers["content-type"] == "application/json"
        head = client.head("/hello")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == hello.headers["content-length"]
        metrics = client.get("/metrics")
        assert metrics.text == "up 1\n"
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert len({r.extensions["network_stream"] for r in (hello, head, metrics)}) == 1


def test_unknown_paths_other_methods_and_failures_get_starlettes_answers(
    server: EndpointServer,
) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=IO_TIMEOUT) as client:
        missing = client.get("/nope")
        assert (missing.status_code, missing.text) == (404, "Not Found")
        posted = client.post("/hello", content=b"x")
        assert (posted.status_code, posted.text) == (405, "Method Not Allowed")
        assert posted.headers["allow"] == "GET, HEAD"
        assert "Method Not Allowed" in posted.reason_phrase
        broken = client.get("/broken")
        assert (broken.status_code, broken.text) == (500, "Internal Server Error")
        assert "secret" not in broken.text


def test_a_malformed_request_is_refused_as_the_data_path_refuses_it(
    server: EndpointServer,
) -> None:
    received = raw_exchange(
        server.port,
        b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        timeout=IO_TIMEOUT,
    )
    assert received.startswith(b"HTTP/1.1 400 "), received
    body = json.loads(received.partition(b"\r\n\r\n")[2])
    assert body["error"] == "Bad Request"


def test_an_idle_connection_is_closed(server: EndpointServer) -> None:
    assert LIMITS.idle_timeout is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.settimeout(LIMITS.idle_timeout + IO_TIMEOUT)
        assert sock.recv(65536) == b""  # closed by the server, not by this timeout
        assert time.monotonic() - started >= LIMITS.idle_timeout - 0.5


def test_a_port_in_use_is_an_error_naming_the_server_and_address(
    server: EndpointServer,
) -> None:
    loop = BackgroundLoop()
    try:
        taken = EndpointServer({}, "127.0.0.1", server.port, "admin API")
        with pytest.raises(OSError, match=f"admin API cannot listen on 127.0.0.1:{server.port}"):
            loop.run(taken.start())
    finally:
        loop.close()
