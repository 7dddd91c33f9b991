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
from typing import IO, Any

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


class SidemeshJson(LineFormat):
    """sidemesh's own JSON object: the same keys on every line (``null`` when not set),
    then the fields policies add (:attr:`Request.log`)."""

    def line(self, request: Request, outcome: Outcome) -> str:
        headers = request.headers
        entry: dict[str, Any] = {
            "method": request.method or None,
            "path": request.path or None,
            "host": request.host or None,
            "listener": request.listener,
            "route": request.route or None,
            "cluster": request.cluster or None,
            "upstream": outcome.upstream or None,
            "status": outcome.status,
            "attempts": request.attempts,
            "duration_ms": round(outcome.duration * 1000, 3),
            "response_flags": ",".join(outcome.flags) or "-",
            "request_id": request.request_id or None,
            "trace_id": None,
            "client": request.connection.client_address,
            "protocol": f"HTTP/{request.version}" if request.version else None,
            "bytes_received": outcome.bytes_received,
            "bytes_sent": outcome.bytes_sent,
            "user_agent": headers.get("user-agent"),
            "x_forwarded_for": headers.get("x-forwarded-for"),
            "upstream_service_time": service_time(request, outcome),
            "grpc_status": grpc_status(request, outcome),
            "start_time": start_time_default(request, outcome),
        }
        if request.log:
            entry.update({k: v for k, v in request.log.items() if k != "response_flags"})
        entry.setdefault("time", utc_second(int(time.time())) + "Z")
        return json.dumps(entry, separators=(",", ":"), default=str) + "\n"


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
