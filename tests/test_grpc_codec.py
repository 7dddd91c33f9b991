"""gRPC as the proxy reads it, without sockets: grpc-timeout, the proxy's own answers as
gRPC errors, the status of a response, and the access log's %GRPC_STATUS%."""

from __future__ import annotations

import urllib.parse

import pytest

from sidemesh import Headers, Response
from sidemesh.datapath.grpc import grpc_reply, grpc_timeout
from sidemesh.datapath.logformat import FormatError, compile_format
from sidemesh.datapath.outcome import Outcome
from sidemesh.testing.objects import make_request

GRPC = [("content-type", "application/grpc")]


@pytest.mark.parametrize(("value", "seconds"), [
    ("5S", 5.0), ("100m", 0.1), ("2M", 120.0), ("1H", 3600.0), ("250u", 0.00025),
    ("99999999n", 0.099999999), ("0m", 0.0),
])
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "5", "S", "5s", "123456789S", "-5S", "5.5S",
                                   "\uff15S"])
def test_a_malformed_grpc_timeout_is_ignored(value: str | None) -> None:
    assert grpc_timeout(value) is None


@pytest.mark.parametrize(("status", "grpc"), [
    (400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14),
    (500, 2), (418, 2),
])
def test_the_proxys_answers_map_as_envoys_http_to_grpc_status(status: int, grpc: int) -> None:
    reply = grpc_reply(Response.text(status, "no healthy upstream"))
    assert reply.status == 200 and reply.body == b""
    assert reply.headers.get("content-type") == "application/grpc"
    assert reply.headers.get("grpc-status") == str(grpc)
    assert reply.grpc_status == grpc


def test_a_timeout_is_deadline_exceeded() -> None:
    reply = grpc_reply(Response.text(504, "upstream request timeout"), timed_out=True)
    assert reply.grpc_status == 4


def test_grpc_message_is_percent_encoded_and_extra_headers_stay() -> None:
    reply = grpc_reply(Response.text(503, "überlastet 100%\r\n",
                                     [("x-sidemesh-overloaded", "true")]))
    message = reply.headers.get("grpc-message")
    assert message is not None and "\r" not in message and "%25" in message
    assert urllib.parse.unquote(message) == "überlastet 100%\r\n"
    assert reply.headers.get("x-sidemesh-overloaded") == "true"
    assert reply.headers.get("content-length") is None


def test_a_responses_grpc_status_comes_from_its_trailers_or_its_head() -> None:
    streamed = Response(200, Headers(GRPC))
    assert streamed.grpc_status is None  # the body has not ended
    streamed._set_trailers([(b"grpc-status", b"0"), (b"grpc-message", b"")])
    assert streamed.grpc_status == 0
    trailers_only = Response(200, Headers([*GRPC, ("grpc-status", "14")]))
    assert trailers_only.grpc_status == 14
    assert Response(200, Headers([*GRPC, ("grpc-status", "x")])).grpc_status is None


def test_grpc_requests_are_told_by_content_type() -> None:
    assert make_request(headers=GRPC).is_grpc
    assert make_request(headers=[("content-type", "application/grpc+proto")]).is_grpc
    assert make_request(headers=[("content-type", "Application/GRPC; x=1")]).is_grpc
    assert not make_request(headers=[("content-type", "application/grpc-web")]).is_grpc
    assert not make_request().is_grpc


def test_grpc_status_in_the_access_log_in_envoys_three_forms() -> None:
    request = make_request(method="POST", path="/pkg.Svc/Call", headers=GRPC)
    request._core["content-type"] = "application/grpc"
    outcome = Outcome()
    outcome.status = 200
    outcome.response = Response(200, Headers(GRPC))
    outcome.response._set_trailers([(b"grpc-status", b"4")])
    line = compile_format("%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% "
                          "%TRAILER(GRPC-STATUS)%").line(request, outcome)
    assert line == "DeadlineExceeded DEADLINE_EXCEEDED 4 4"
    plain = make_request()
    assert compile_format("%GRPC_STATUS%").line(plain, Outcome()) == "-"
    with pytest.raises(FormatError, match="CAMEL_STRING"):
        compile_format("%GRPC_STATUS(LOUD)%")
