"""The data path end to end: a real sidecar in front of real upstream servers."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from sidemesh.testing import (
    BackgroundLoop,
    Reply,
    Upstream,
    raw_exchange,
    running_sidecar,
    simple_config,
)


def test_get_is_proxied_with_forwarding_headers() -> None:
    with (
        Upstream(lambda r: Reply(body=b"hello " + r.path.encode())) as up,
        running_sidecar(simple_config(up.address)) as sc,
    ):
        response = httpx.get(
            sc.url("main") + "/a?b=1",
            headers={"Connection": "keep-alive, x-secret", "x-secret": "1", "keep-alive": "5"},
            timeout=5,
        )
        assert response.status_code == 200
        assert response.text == "hello /a?b=1"
        seen = up.requests[0]
        assert seen.headers["host"] == f"127.0.0.1:{sc.port('main')}"
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"
        assert seen.headers["x-forwarded-proto"] == "http"
        assert len(seen.headers["x-request-id"]) == 36
        assert "x-secret" not in seen.headers and "keep-alive" not in seen.headers


def test_incoming_request_id_is_kept() -> None:
    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        httpx.get(sc.url("main") + "/", headers={"x-request-id": "abc"}, timeout=5)
        assert up.requests[0].headers["x-request-id"] == "abc"


def test_keep_alive_on_both_sides_reuses_one_upstream_connection() -> None:
    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        with httpx.Client(timeout=5) as client:
            for _ in range(20):
                assert client.get(sc.url("main") + "/x").status_code == 200
        assert len(up.requests) == 20
        assert up.connections == 1


def test_no_route_answers_404_json_naming_the_listener() -> None:
    doc = simple_config("127.0.0.1:9")
    doc["listeners"][0]["routes"][0]["match"] = {"prefix": "/api"}
    with running_sidecar(doc) as sc:
        response = httpx.get(sc.url("main") + "/other", timeout=5)
        assert response.status_code == 404
        assert response.json()["listener"] == "main"


def test_dead_upstream_is_503_and_slow_upstream_is_504() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with running_sidecar(simple_config(dead)) as sc:
        response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 503
        assert "connection failure" in response.text
    with (
        Upstream(lambda r: Reply(delay=2.0)) as up,
        running_sidecar(simple_config(up.address, timeout="300ms")) as sc,
    ):
        response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 504
        assert response.text == "upstream request timeout"


def test_upstream_reset_before_headers_is_503() -> None:
    with (
        Upstream(lambda r: Reply(reset=True)) as up,
        running_sidecar(simple_config(up.address)) as sc,
    ):
        response = httpx.get(sc.url("main") + "/", timeout=5)
        assert response.status_code == 503


def test_chunked_bodies_stream_both_ways() -> None:
    with (
        Upstream(lambda r: Reply(chunks=[b"a" * 10, r.body, b"z"])) as up,
        running_sidecar(simple_config(up.address)) as sc,
    ):

        def parts():  # type: ignore[no-untyped-def]
            yield b"hello "
            yield b"world"

        response = httpx.post(sc.url("main") + "/", content=parts(), timeout=5)
        assert response.status_code == 200
        assert response.content == b"a" * 10 + b"hello world" + b"z"
        assert up.requests[0].headers.get("transfer-encoding") == "chunked"
        assert response.headers["transfer-encoding"] == "chunked"


def test_absolute_form_target_routes_by_its_authority() -> None:
    doc = simple_config("127.0.0.1:9")
    with Upstream(lambda r: Reply(body=b"reviews")) as up:
        doc["clusters"].append({"name": "reviews", "endpoints": [{"address": up.address}]})
        doc["listeners"][0]["routes"].insert(
            0,
            {"name": "reviews", "match": {"host": "reviews", "prefix": "/"}, "cluster": "reviews"},
        )
        with running_sidecar(doc) as sc:
            raw = raw_exchange(
                sc.port("main"),
                b"GET http://reviews/x HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
            )
            assert raw.startswith(b"HTTP/1.1 200")
            assert raw.endswith(b"reviews")
            assert up.requests[0].headers["host"] == "reviews"
            assert up.requests[0].path == "/x"
            with_host = httpx.get(sc.url("main") + "/y", headers={"host": "reviews"}, timeout=5)
            assert with_host.text == "reviews"


def test_head_and_204_have_no_body_and_connection_is_reused() -> None:
    def answer(seen):  # type: ignore[no-untyped-def]
        return Reply(status=204, body=b"") if seen.path == "/empty" else Reply(body=b"12345")

    with (
        Upstream(answer) as up,
        running_sidecar(simple_config(up.address)) as sc,
        httpx.Client(timeout=5) as client,
    ):
        head = client.head(sc.url("main") + "/x")
        assert head.status_code == 200
        assert head.headers["content-length"] == "5"
        assert client.get(sc.url("main") + "/empty").status_code == 204
        assert client.get(sc.url("main") + "/x").text == "12345"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_expect_100_continue_is_answered_by_the_proxy(method: str) -> None:
    with (
        Upstream(lambda r: Reply(body=r.body)) as up,
        running_sidecar(simple_config(up.address)) as sc,
    ):
        with socket.create_connection(("127.0.0.1", sc.port("main")), timeout=3) as sock:
            sock.sendall(
                f"{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"hello")
            response = b""
            while not response.endswith(b"hello") and (chunk := sock.recv(4096)):
                response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            assert response.endswith(b"hello")
        assert "expect" not in up.requests[0].headers


def test_a_body_delimited_by_the_upstream_closing_is_relayed_whole() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        for part in (b"until", b"-", b"close"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    bg = BackgroundLoop()
    try:
        server = bg.run(asyncio.start_server(answer, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        with running_sidecar(simple_config(f"127.0.0.1:{port}")) as sc:
            for _ in range(2):
                response = httpx.get(sc.url("main") + "/", timeout=5)
                assert response.status_code == 200
                assert response.text == "until-close"
        server.close()
    finally:
        bg.close()


def test_response_hop_by_hop_fields_are_not_relayed() -> None:
    fields = {
        "keep-alive": "timeout=5",
        "x-internal": "1",
        "connection": "x-internal",
        "x-app": "a",
    }
    with (
        Upstream(lambda r: Reply(body=b"hi", headers=fields)) as up,
        running_sidecar(simple_config(up.address)) as sc,
    ):
        raw = raw_exchange(
            sc.port("main"), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-app: a" in head and b"content-length: 2" in head
    assert b"x-internal" not in head and b"keep-alive" not in head
    assert raw.endswith(b"\r\n\r\nhi")
