"""What happened to one request: what the access log and metrics are made of."""

from __future__ import annotations

from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.messages import Response

__all__ = ["Outcome"]


class Outcome:
    """What happened to one request, for the access log and metrics."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "duration",
        "failure",
        "flags",
        "request_end",
        "response",
        "response_at",
        "started",
        "status",
        "upstream",
        "upstream_protocol",
    )

    def __init__(self) -> None:
        self.status = 0
        #: the response head sent to the client, if one was.
        self.response: Response | None = None
        self.flags: list[ResponseFlag] = []
        self.upstream = ""
        self.upstream_protocol = ""
        #: body bytes received from and sent to the client (Envoy's BYTES_RECEIVED/SENT).
        self.bytes_received = 0
        self.bytes_sent = 0
        #: ``time.monotonic()`` when the whole request had arrived, and when the answer's
        #: head came from the upstream; 0.0 when that did not happen.
        self.request_end = 0.0
        self.response_at = 0.0
        #: why the last attempt could not connect (``UF``), else "".
        self.failure = ""
        #: seconds from the request's start to its end, and the start on the wall clock:
        #: set when the request is logged.
        self.duration = 0.0
        self.started = 0.0
