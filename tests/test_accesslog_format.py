"""Access-log formats (issue 17): Envoy's format strings and json_format against a real
sidecar and upstream, the default JSON line's new fields, config errors for what does not
compile, and the format compiler on its own."""

from __future__ import annotations

import io
import json
import re
import socket
from typing import Any

import pytest

from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.logformat import FormatError, compile_format, compile_log_format
from sidemesh.datapath.model import AccessLogConfig
from sidemesh.datapath.outcome import Outcome
from sidemesh.testing import (
    Reply,
    Upstream,
    make_request,
    running_sidecar,
    simple_config,
    validate_config,
    wait_for,
)

#: Envoy's default format (source/common/formatter/substitution_formatter.cc).
ENVOY_DEFAULT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
REQUEST_ID = "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"


def _exchange(port: int, head: str, body: bytes = b"") -> tuple[bytes, int]:
    """Send one request on a fresh connection; the answer and the client's own port."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(head.encode("latin-1") + b"\r\n" + body)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), client.getsockname()[1]


def _lines(log: io.StringIO, count: int = 1) -> list[str]:
    assert wait_for(lambda: log.getvalue().count("\n") >= count)
    return log.getvalue().splitlines(keepends=True)


def _with_log(doc: dict[str, Any], access_log: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "access_log": access_log}


# against a real sidecar -------------------------------------------------------------------
def test_envoys_default_format_writes_the_line_envoy_writes() -> None:
    with Upstream(lambda r: Reply(body=b"hello")) as up:
        doc = _with_log(simple_config(up.address), {"format": ENVOY_DEFAULT})
        with running_sidecar(doc) as sc:
            log = io.StringIO()
            sc.log_to(log)
            answer, _ = _exchange(
                sc.port("main"),
                "POST /api/v1/locations?x=1 HTTP/1.1\r\nHost: locations\r\n"
                f"User-Agent: nsq2http\r\nX-Request-Id: {REQUEST_ID}\r\n"
                "Content-Length: 3\r\nConnection: close\r\n",
                b"abc",
            )
            assert answer.startswith(b"HTTP/1.1 200 ")
            (line,) = _lines(log)
    # x-forwarded-for is the one forwarded: sidemesh appends the client, as Envoy does
    # with use_remote_address.
    expected = (
        rf'\[{TIME}\] "POST /api/v1/locations\?x=1 HTTP/1\.1" 200 - 3 5 \d+ \d+ '
        rf'"127\.0\.0\.1" "nsq2http" "{REQUEST_ID}" "locations" "{re.escape(up.address)}"\n'
    )
    assert re.fullmatch(expected, line), line


def test_a_local_answer_has_dashes_where_envoy_has_them() -> None:
    doc = simple_config("127.0.0.1:9")
    doc["listeners"][0]["routes"][0]["match"] = {"prefix": "/only"}
    with running_sidecar(_with_log(doc, {"format": ENVOY_DEFAULT})) as sc:
        log = io.StringIO()
        sc.log_to(log)
        answer, _ = _exchange(sc.port("main"), "GET /elsewhere HTTP/1.1\r\nHost: svc\r\n"
                              "Connection: close\r\n")
        body = answer.split(b"\r\n\r\n", 1)[1]
        (line,) = _lines(log)
    # No route: no upstream, no service time, no user agent, nothing forwarded (so no
    # x-forwarded-for); the 404's body was sent.
    expected = (
        rf'\[{TIME}\] "GET /elsewhere HTTP/1\.1" 404 NR 0 {len(body)} \d+ - '
        rf'"-" "-" "[0-9a-f-]{{36}}" "svc" "-"\n'
    )
    assert re.fullmatch(expected, line), line


def test_json_format_types_values_and_sorts_keys_as_envoy() -> None:
    json_format = {
        "status": "%RESPONSE_CODE%",
        "duration": "%DURATION%",
        "bytes": {"in": "%BYTES_RECEIVED%", "out": "%BYTES_SENT%"},
        "missing": "%REQ(X-NOT-SENT)%",
        "request": "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-NOT-SENT)%",
        "route": "%ROUTE_NAME%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "start": "%START_TIME%",
        "kind": "proxy",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
    }
    with (
        Upstream(lambda r: Reply(chunks=[b"hel", b"lo, ", b"world"])) as up,
        running_sidecar(_with_log(simple_config(up.address), {"json_format": json_format})) as sc,
    ):
        log = io.StringIO()
        sc.log_to(log)
        answer, _ = _exchange(sc.port("main"), "PUT /items HTTP/1.1\r\nHost: svc\r\n"
                              "Content-Length: 4\r\nConnection: close\r\n", b"data")
        assert answer.endswith(b"0\r\n\r\n")
        (line,) = _lines(log)
    entry = json.loads(line)
    assert list(entry) == sorted(entry) and list(entry["bytes"]) == ["in", "out"]
    assert isinstance(entry.pop("duration"), int)
    assert re.fullmatch(TIME, entry.pop("start"))
    # The chunked body's framing is not body: 12 bytes were sent, as Envoy counts them.
    assert entry == {
        "status": 200, "bytes": {"in": 4, "out": 12}, "missing": None,
        "request": "PUT /items -", "route": "all", "cluster": "backend", "kind": "proxy",
        "flags": "-", "details": "via_upstream",
    }  # fmt: skip
    assert line.startswith('{"bytes":{"in":4,"out":12},"cluster":"backend"') and line[-1] == "\n"


def test_header_operators_truncate_and_fall_back_and_addresses_are_the_connections() -> None:
    form = (
        "%REQ(USER-AGENT):4%|%REQ(X-NOPE)%|%REQ(X-NOPE?USER-AGENT)%|%RESP(X-NOPE?X-SERVED-BY)%|"
        "%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_LOCAL_PORT%|"
        "%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%ENVIRONMENT(SIDEMESH_NO_SUCH_VARIABLE)%\n"
    )
    with (
        Upstream(lambda r: Reply(headers={"x-served-by": "u1"})) as up,
        running_sidecar(_with_log(simple_config(up.address), {"format": form})) as sc,
    ):
        log = io.StringIO()
        sc.log_to(log)
        port = sc.port("main")
        _, client_port = _exchange(port, "GET / HTTP/1.1\r\nHost: svc\r\n"
                                   "User-Agent: curl/8.5.0\r\nConnection: close\r\n")
        (line,) = _lines(log)
    assert line == (f"curl|-|curl/8.5.0|u1|127.0.0.1:{client_port}|127.0.0.1:{port}|{port}"
                    "|1|-\n")


def test_the_default_json_line_keeps_its_keys_and_adds_envoys_fields() -> None:
    with Upstream(lambda r: Reply(body=b"hello")) as up, running_sidecar(
        simple_config(up.address)
    ) as sc:
        log = io.StringIO()
        sc.log_to(log)
        _exchange(sc.port("main"), "POST /p HTTP/1.1\r\nHost: svc\r\nUser-Agent: ua/1\r\n"
                  "X-Forwarded-For: 10.0.0.1\r\nContent-Length: 3\r\nConnection: close\r\n",
                  b"abc")
        (line,) = _lines(log)
    entry = json.loads(line)
    assert list(entry)[:14] == ["method", "path", "host", "listener", "route", "cluster",
                                "upstream", "status", "attempts", "duration_ms",
                                "response_flags", "request_id", "trace_id", "client"]
    assert entry["protocol"] == "HTTP/1.1"
    assert (entry["bytes_received"], entry["bytes_sent"]) == (3, 5)
    assert (entry["user_agent"], entry["x_forwarded_for"]) == ("ua/1", "10.0.0.1, 127.0.0.1")
    assert isinstance(entry["upstream_service_time"], int)
    assert re.fullmatch(TIME, entry["start_time"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])


def test_a_request_refused_before_routing_is_logged_in_the_configured_format() -> None:
    form = '"%REQ(:METHOD)%" %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT%\n'
    with running_sidecar(_with_log(simple_config("127.0.0.1:9"), {"format": form})) as sc:
        log = io.StringIO()
        sc.log_to(log)
        answer, _ = _exchange(sc.port("main"), "GET /a%2Fb HTTP/1.1\r\nHost: svc\r\n")
        (line,) = _lines(log)
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert line == f'"-" - 400 DPE {len(body)}\n'


def test_a_reload_changes_the_format() -> None:
    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        sc.apply(_with_log(simple_config(up.address), {"format": "%RESPONSE_CODE%\n"}))
        log = io.StringIO()
        sc.log_to(log)
        _exchange(sc.port("main"), "GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n")
        assert _lines(log) == ["200\n"]


# config errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("access_log", "path", "words"),
    [
        ({"format": "[%START_TIM%]\n"}, "access_log.format",
         ["unknown command operator %START_TIM%", "did you mean %START_TIME%"]),
        ({"format": "100% sure\n"}, "access_log.format", ["no command operator at position 3"]),
        ({"format": "%REQ(A?B?C)%"}, "access_log.format", ["only one alternative header"]),
        ({"format": "%DURATION(ms)%"}, "access_log.format", ["takes no argument"]),
        ({"json_format": {"a": {"b": "%NOPE%"}}}, "access_log.json_format.a.b",
         ["unknown command operator %NOPE%"]),
        ({"format": "%PROTOCOL%", "json_format": {"p": "%PROTOCOL%"}}, "access_log",
         ["not both"]),
    ],
)
def test_a_format_that_does_not_compile_is_a_config_error_at_its_path(
    access_log: dict[str, Any], path: str, words: list[str]
) -> None:
    errors = validate_config(_with_log(simple_config("127.0.0.1:9"), access_log))
    assert [e.path for e in errors] == [path]
    assert all(word in errors[0].message for word in words), errors[0].message


# the compiler alone ----------------------------------------------------------------------
def _done(status: int = 200, **fields: Any) -> Outcome:
    outcome = Outcome()
    outcome.status = status
    outcome.started = 1460751420.3109  # Envoy's example: 2016-04-15T20:17:00.310Z
    for name, value in fields.items():
        setattr(outcome, name, value)
    return outcome


def test_start_time_takes_envoys_format_specifiers() -> None:
    request, outcome = make_request(), _done()
    line = compile_format(
        "%START_TIME%|%START_TIME(%s.%3f)%|%START_TIME(%Y/%m/%dT%H:%M:%S%z %s)%|"
        "%START_TIME(%H:%M:%E3S)%|%START_TIME(%6f %f)%|%START_TIME(%%s)%"
    ).line(request, outcome)
    assert line == ("2016-04-15T20:17:00.310Z|1460751420.310|2016/04/15T20:17:00+0000 1460751420"
                    "|20:17:00.310|310900 310900000|%s")


def test_durations_are_whole_milliseconds_and_unset_ones_are_dashes() -> None:
    request = make_request()
    request.start = 100.0
    form = compile_format("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% "
                          "%RESPONSE_TX_DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%")
    assert form.line(request, _done(duration=0.0129)) == "12 - - - -"
    answered = _done(duration=0.0309, request_end=100.002, response_at=100.0205)
    assert form.line(request, answered) == "30 2 20 10 18"


def test_flags_details_and_the_upstream_as_envoy_names_them() -> None:
    request = make_request(client="[::1]:5000")
    form = compile_format("%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST% "
                          "%UPSTREAM_TRANSPORT_FAILURE_REASON% %DOWNSTREAM_REMOTE_ADDRESS% "
                          "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_PROTOCOL%")
    failed = _done(503, upstream="10.0.0.7:80", failure="connection refused",
                   flags=[ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED,
                          ResponseFlag.UPSTREAM_CONNECTION_FAILURE])
    # No connection, so no upstream protocol (Envoy sets it once the pool is ready).
    assert form.line(request, failed) == (
        "URX,UF upstream_reset_before_response_started{connection_failure} 10.0.0.7:80 "
        "connection refused [::1]:5000 ::1 -")
    answered = _done(200, upstream="10.0.0.7:80", upstream_protocol="HTTP/2")
    assert form.line(request, answered).endswith(" HTTP/2")
    assert form.line(request, _done(404, flags=[ResponseFlag.NO_ROUTE_FOUND])) == \
        "NR route_not_found - - [::1]:5000 ::1 -"


def test_a_json_format_compiles_once_into_typed_values() -> None:
    request = make_request(headers=[("user-agent", "curl/8.5.0")])
    form = compile_log_format(AccessLogConfig(json_format={
        "z": ["%RESPONSE_CODE%", "%REQ(USER-AGENT):4%"], "code": "%RESPONSE_CODE%",
        "text": "code=%RESPONSE_CODE% host=%UPSTREAM_HOST%", "none": "%UPSTREAM_HOST%",
    }))
    assert form.line(request, _done(201)) == (
        '{"code":201,"none":null,"text":"code=201 host=-","z":[201,"curl"]}\n')
    with pytest.raises(FormatError, match="a mapping or a list") as raised:
        compile_log_format(AccessLogConfig(json_format={"n": {"m": 5}}))
    assert raised.value.where == ("n", "m")
