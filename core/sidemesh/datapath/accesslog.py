"""One line per request, written in batches.

A write per request costs a system call each; lines are collected and flushed on the
next loop iteration (or when the batch is large), which keeps the log current to within
milliseconds at a fraction of the cost.

What a line says is a :class:`LineFormat`: sidemesh's JSON object (:class:`SidemeshJson`,
the default) or an Envoy format compiled from the config (:mod:`logformat`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from json.encoder import encode_basestring_ascii as quote
from typing import IO, Any, Final

from sidemesh.datapath.logfields import (
    grpc_status,
    service_time,
    start_time_default,
    utc_second,
)
from sidemesh.datapath.messages import Request
from sidemesh.datapath.outcome import Outcome

__all__ = ["SIDEMESH_JSON", "AccessLog", "LineFormat", "SidemeshJson"]

BATCH = 256


class LineFormat:
    """How a finished request becomes one line of the log."""

    def __init__(self, local_address: bool = False) -> None:
        #: the format names the connection's local address (looked up only then).
        self.local_address = local_address

    def line(self, request: Request, outcome: Outcome) -> str:
        """The line, its newline included."""
        raise NotImplementedError


#: the keys of every sidemesh JSON line, in order (``time`` ends it).
JSON_KEYS: Final = (
    "method", "path", "host", "listener", "route", "cluster", "upstream", "status",
    "attempts", "duration_ms", "response_flags", "request_id", "trace_id", "client",
    "protocol", "bytes_received", "bytes_sent", "user_agent", "x_forwarded_for",
    "upstream_service_time", "grpc_status", "start_time",
)  # fmt: skip
_OPENERS: Final = tuple(("{" if i == 0 else ",") + f'"{key}":' for i, key in enumerate(JSON_KEYS))
_FIXED: Final = frozenset(JSON_KEYS)


def _text(value: str | None) -> str:
    return "null" if value is None else quote(value)


def _count(value: int | None) -> str:
    return "null" if value is None else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class SidemeshJson(LineFormat):
    """sidemesh's own JSON object: the same keys on every line (``null`` when not set),
    then the fields policies add (:attr:`Request.log`).

    Written field by field: ``json.dumps`` of a dictionary cost two thirds of a line."""

    def line(self, request: Request, outcome: Outcome) -> str:
        headers = request.headers
        values = [
            _text(request.method or None),
            _text(request.path or None),
            _text(request.host or None),
            quote(request.listener),
            _text(request.route or None),
            _text(request.cluster or None),
            _text(outcome.upstream or None),
            str(outcome.status),
            str(request.attempts),
            repr(round(outcome.duration * 1000, 3)),
            quote(",".join(outcome.flags) or "-"),
            _text(request.request_id or None),
            "null",
            quote(request.connection.client_address),
            _text(f"HTTP/{request.version}" if request.version else None),
            str(outcome.bytes_received),
            str(outcome.bytes_sent),
            _text(headers.get("user-agent")),
            _text(headers.get("x-forwarded-for")),
            _count(service_time(request, outcome)),
            _count(grpc_status(request, outcome)),
            quote(str(start_time_default(request, outcome))),
        ]
        log = request.log
        written = quote(utc_second(int(time.time())) + "Z")
        if not log:
            fields = [opener + value for opener, value in zip(_OPENERS, values, strict=True)]
            fields.append(',"time":' + written + "}\n")
            return "".join(fields)
        # What policies add replaces a key of the same name in its place, or follows.
        for index, key in enumerate(JSON_KEYS):
            if key in log and key != "response_flags":
                values[index] = _json(log[key])
        fields = [opener + value for opener, value in zip(_OPENERS, values, strict=True)]
        for key, value in log.items():
            if key not in _FIXED:
                fields.append(f",{quote(key)}:{_json(value)}")
        if "time" not in log:
            fields.append(',"time":' + written)
        fields.append("}\n")
        return "".join(fields)


SIDEMESH_JSON = SidemeshJson()


class AccessLog:
    """Writes access-log lines to a stream; ``stream=None`` disables logging."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    @classmethod
    def open(cls, target: str) -> AccessLog:
        """``-`` for stdout, ``off`` for none, otherwise a file path (appended to)."""
        if target == "off":
            return cls(None)
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", encoding="utf-8"))

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def record(self, form: LineFormat, request: Request, outcome: Outcome) -> None:
        """Log a finished request (``outcome.duration`` set) in ``form``."""
        if self.stream is None:
            return
        outcome.started = time.time() - outcome.duration
        self._lines.append(form.line(request, outcome))
        if len(self._lines) >= BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines or self.stream is None:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None
