"""Envoy's access-log command operators, each a small function of one finished request.

A field returns a ``str``, an ``int`` (Envoy's numeric operators: durations in whole
milliseconds, bytes, the status) or ``None`` for a value that is not set, which a format
string writes as ``-`` and a JSON format as ``null``. :mod:`logformat` parses a format
once per config and keeps the fields it names; nothing here parses per request.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from typing import Final

from sidemesh.datapath.grpc import GRPC_STATUS, is_grpc
from sidemesh.datapath.messages import Request
from sidemesh.datapath.outcome import Outcome

__all__ = [
    "OPERATORS",
    "Field",
    "Value",
    "environment",
    "header_field",
    "service_time",
    "start_time",
    "start_time_default",
    "utc_second",
]

Value = str | int | None
Field = Callable[[Request, Outcome], Value]

_PROTOCOLS: Final = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


# times ----------------------------------------------------------------------------------
class _Second:
    """The formatted date and time of the last second seen: most lines in a busy second
    share it, so ``strftime`` runs once a second instead of once a line."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def iso(self, second: int) -> str:
        if second != self.second:
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        return self.text


_SECOND: Final = _Second()
#: for the time lines are written, which moves on while long requests' starts stay behind.
_WRITTEN: Final = _Second()


def utc_second(second: int) -> str:
    """``2016-04-15T20:17:00`` for the second (since the epoch) a line is written."""
    return _WRITTEN.iso(second)


def _micros(seconds: float) -> int:
    # A float of epoch seconds holds microseconds, not more: 0.310 must not print as .309.
    return round(seconds * 1_000_000)


def start_time_default(request: Request, outcome: Outcome) -> Value:
    """Envoy's ``%START_TIME%``: UTC, milliseconds, ``2016-04-15T20:17:00.310Z``."""
    ms = _micros(outcome.started) // 1000
    return f"{_SECOND.iso(ms // 1000)}.{ms % 1000:03d}Z"


#: what START_TIME's own format adds to strftime's: ``%s`` (seconds since the epoch),
#: ``%f`` / ``%1f``..``%9f`` (fraction digits, 9 by default) and absl's ``%E3S``
#: (seconds with that many fraction digits). ``%%`` is consumed first so ``%%s`` stays.
_TIME_SPECIFIER: Final = re.compile(r"%%|%s|%([1-9]?)f|%E([0-9])S")


def start_time(pattern: str) -> Field:
    """``%START_TIME(pattern)%``, in UTC as Envoy writes it."""
    pieces: list[tuple[str, int]] = []  # (strftime text, 0) or ("", kind): see below
    position = 0
    for match in _TIME_SPECIFIER.finditer(pattern):
        if match.group(0) == "%%":
            continue
        if match.start() > position:
            pieces.append((pattern[position : match.start()], 0))
        if match.group(0) == "%s":
            pieces.append(("", -1))
        elif match.group(2) is not None:
            pieces.append(("", 100 + int(match.group(2))))  # %E<n>S
        else:
            pieces.append(("", int(match.group(1) or 9)))  # %<n>f
        position = match.end()
    if position < len(pattern):
        pieces.append((pattern[position:], 0))

    def field(request: Request, outcome: Outcome) -> Value:
        seconds, fraction = divmod(_micros(outcome.started) * 1000, 1_000_000_000)
        moment = time.gmtime(seconds)
        out: list[str] = []
        for text, kind in pieces:
            if kind == 0:
                out.append(time.strftime(text, moment))
            elif kind == -1:
                out.append(str(seconds))
            elif kind >= 100:
                digits = kind - 100
                out.append(f"{moment.tm_sec:02d}")
                if digits:
                    out.append("." + f"{fraction:09d}"[:digits])
            else:
                out.append(f"{fraction:09d}"[:kind])
        return "".join(out)

    return field


def _ms(seconds: float) -> int:
    # Envoy truncates durations to whole milliseconds; the nanosecond added keeps a
    # float's 1.9999999 ms at 2.
    return int(max(0.0, seconds) * 1000 + 1e-6)


def _duration(request: Request, outcome: Outcome) -> Value:
    return _ms(outcome.duration)


def _request_duration(request: Request, outcome: Outcome) -> Value:
    return _ms(outcome.request_end - request.start) if outcome.request_end else None


def _response_duration(request: Request, outcome: Outcome) -> Value:
    return _ms(outcome.response_at - request.start) if outcome.response_at else None


def _response_tx_duration(request: Request, outcome: Outcome) -> Value:
    if not outcome.response_at:
        return None
    return _ms(request.start + outcome.duration - outcome.response_at)


def service_time(request: Request, outcome: Outcome) -> int | None:
    """Envoy's ``x-envoy-upstream-service-time``: ms from the whole request received to
    the upstream's response head; ``None`` when there was none, or it came first."""
    end, head = max(outcome.request_end, request.start), outcome.response_at
    if not head or not outcome.request_end or end > head:
        return None
    return _ms(head - end)


def _service_time_header(request: Request, outcome: Outcome) -> Value:
    ms = service_time(request, outcome)
    return None if ms is None else str(ms)


# addresses ------------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def _with_port(address: str) -> Value:
    if not address:
        return None
    host, port = _host_port(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_fields(get: Callable[[Request, Outcome], str]) -> tuple[Field, Field, Field]:
    def with_port(request: Request, outcome: Outcome) -> Value:
        return _with_port(get(request, outcome))

    def without_port(request: Request, outcome: Outcome) -> Value:
        address = get(request, outcome)
        return _host_port(address)[0] if address else None

    def port(request: Request, outcome: Outcome) -> Value:
        address = get(request, outcome)
        return int(_host_port(address)[1]) if address else None

    return with_port, without_port, port


def _client(request: Request, outcome: Outcome) -> str:
    return request.connection.client_address


def _local(request: Request, outcome: Outcome) -> str:
    return request.connection.local_address


def _upstream(request: Request, outcome: Outcome) -> str:
    return outcome.upstream


# headers --------------------------------------------------------------------------------
def _request_header(name: str) -> Field:
    if name == ":method":
        return lambda request, outcome: request.method or None
    if name == ":path":
        return lambda request, outcome: request.path or None
    if name == ":scheme":
        return lambda request, outcome: request.scheme or None
    if name in (":authority", "host"):
        return lambda request, outcome: request.headers.get("host") or request.host or None
    return lambda request, outcome: request.headers.get(name)


def _response_header(name: str) -> Field:
    if name == "x-envoy-upstream-service-time":
        # Envoy sets it on every response from an upstream; its log reads that value.
        return _service_time_header
    if name == ":status":
        return lambda request, outcome: str(outcome.status) if outcome.response else None
    key = name.encode("latin-1")

    def field(request: Request, outcome: Outcome) -> Value:
        response = outcome.response
        if response is None:
            return None
        raw = response.raw_head
        if raw is None:
            return response.headers.get(name)
        # An upstream head no policy read: compare bytes rather than decode every field.
        for field_name, value in raw:
            if field_name == key:
                return value.decode("latin-1")
        return None

    return field


def _trailer(name: str) -> Field:
    def field(request: Request, outcome: Outcome) -> Value:
        response = outcome.response
        trailers = response.trailers if response is not None else None
        return trailers.get(name) if trailers is not None else None

    return field


def header_field(kind: str, main: str, alternative: str | None) -> Field:
    """``REQ``, ``RESP`` or ``TRAILER`` of header ``main``, else ``alternative``."""
    make = {"REQ": _request_header, "RESP": _response_header, "TRAILER": _trailer}[kind]
    first = make(main.lower())
    if alternative is None:
        return first
    second = make(alternative.lower())

    def either(request: Request, outcome: Outcome) -> Value:
        value = first(request, outcome)
        return second(request, outcome) if value is None else value

    return either


def environment(name: str) -> Field:
    """``%ENVIRONMENT(X)%``: read once, when the format is compiled (as Envoy does)."""
    value = os.environ.get(name)
    return lambda request, outcome: value


# the rest -------------------------------------------------------------------------------
#: Envoy's RESPONSE_CODE_DETAILS for an answer the proxy made itself, by the flag that
#: caused it (sidemesh's own flags get names in Envoy's style).
_DETAILS: Final = {
    "NR": "route_not_found",
    "NC": "cluster_not_found",
    "UH": "no_healthy_upstream",
    "UF": "upstream_reset_before_response_started{connection_failure}",
    "UC": "upstream_reset_before_response_started{connection_termination}",
    "UO": "upstream_reset_before_response_started{overflow}",
    "UPE": "upstream_reset_before_response_started{protocol_error}",
    "UT": "response_timeout",
    "DPE": "http1.codec_error",
    "DC": "downstream_remote_disconnect",
    "PA": "policy_answered",
    "PE": "policy_error",
}


def _code_details(request: Request, outcome: Outcome) -> Value:
    if outcome.response_at:
        return "via_upstream"
    for flag in outcome.flags:
        details = _DETAILS.get(flag.value)
        if details is not None:
            return details
    return None


def _local_reply_body(request: Request, outcome: Outcome) -> Value:
    response = outcome.response
    if response is None or outcome.response_at or not response.body:
        return None
    return response.body.decode("utf-8", "replace")


def grpc_status(request: Request, outcome: Outcome) -> int | None:
    """The gRPC status a gRPC request ended with (``None`` for other requests)."""
    if not is_grpc(request._core.get("content-type")):
        return None
    response = outcome.response
    return response.grpc_status if response is not None else None


_GRPC_NAMES: Final = {code: name for name, code in GRPC_STATUS.items()}
GRPC_STATUS_FORMS: Final = ("CAMEL_STRING", "SNAKE_STRING", "NUMBER")


def grpc_status_field(form: str) -> Field:
    """Envoy's ``%GRPC_STATUS(X)%``: ``Unavailable``, ``UNAVAILABLE`` or ``14``."""

    def field(request: Request, outcome: Outcome) -> Value:
        code = grpc_status(request, outcome)
        if code is None or form == "NUMBER":
            return code
        name = _GRPC_NAMES.get(code)
        if name is None:
            return str(code)
        if form == "SNAKE_STRING":
            return name.upper().replace("-", "_")
        return "".join(part.capitalize() for part in name.split("-"))

    return field


_HOSTNAME: Final = socket.gethostname()
_remote = _address_fields(_client)
_local_fields = _address_fields(_local)
_upstream_fields = _address_fields(_upstream)

#: operators without an argument, by name.
OPERATORS: Final[dict[str, Field]] = {
    "START_TIME": start_time_default,
    "PROTOCOL": lambda request, outcome: _PROTOCOLS.get(request.version),
    "UPSTREAM_PROTOCOL": lambda request, outcome: outcome.upstream_protocol or None,
    "RESPONSE_CODE": lambda request, outcome: outcome.status,
    "RESPONSE_CODE_DETAILS": _code_details,
    "RESPONSE_FLAGS": lambda request, outcome: ",".join(outcome.flags) or "-",
    "BYTES_RECEIVED": lambda request, outcome: outcome.bytes_received,
    "BYTES_SENT": lambda request, outcome: outcome.bytes_sent,
    "DURATION": _duration,
    "REQUEST_DURATION": _request_duration,
    "RESPONSE_DURATION": _response_duration,
    "RESPONSE_TX_DURATION": _response_tx_duration,
    "ROUTE_NAME": lambda request, outcome: request.route or None,
    "UPSTREAM_HOST": _upstream_fields[0],
    "UPSTREAM_REMOTE_ADDRESS": _upstream_fields[0],
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _upstream_fields[1],
    "UPSTREAM_REMOTE_PORT": _upstream_fields[2],
    "UPSTREAM_CLUSTER": lambda request, outcome: request.cluster or None,
    "UPSTREAM_CLUSTER_RAW": lambda request, outcome: request.cluster or None,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda request, outcome: request.attempts,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda request, outcome: outcome.failure or None,
    "DOWNSTREAM_REMOTE_ADDRESS": _remote[0],
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _remote[1],
    "DOWNSTREAM_REMOTE_PORT": _remote[2],
    # No PROXY protocol or trusted x-forwarded-for hops: the direct peer is the peer.
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _remote[0],
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _remote[1],
    "DOWNSTREAM_DIRECT_REMOTE_PORT": _remote[2],
    "DOWNSTREAM_LOCAL_ADDRESS": _local_fields[0],
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _local_fields[1],
    "DOWNSTREAM_LOCAL_PORT": _local_fields[2],
    "DOWNSTREAM_PEER_URI_SAN": lambda request, outcome: request.peer_identity,
    "LOCAL_REPLY_BODY": _local_reply_body,
    "HOSTNAME": lambda request, outcome: _HOSTNAME,
}
