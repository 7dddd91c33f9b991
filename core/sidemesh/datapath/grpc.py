"""gRPC as the proxy sees it: which requests are gRPC, their ``grpc-timeout``, and the
proxy's own answers to them turned into gRPC errors (as Envoy's local replies are)."""

from __future__ import annotations

import urllib.parse
from typing import Final

from sidemesh.datapath.messages import Headers, Response, is_grpc

__all__ = ["GRPC_STATUS", "grpc_reply", "grpc_timeout", "is_grpc"]

#: gRPC status codes by name (grpc/doc/statuscodes.md).
GRPC_STATUS: Final = {
    "ok": 0, "cancelled": 1, "unknown": 2, "invalid-argument": 3, "deadline-exceeded": 4,
    "not-found": 5, "already-exists": 6, "permission-denied": 7, "resource-exhausted": 8,
    "failed-precondition": 9, "aborted": 10, "out-of-range": 11, "unimplemented": 12,
    "internal": 13, "unavailable": 14, "data-loss": 15, "unauthenticated": 16,
}  # fmt: skip
#: the gRPC status of an HTTP status the proxy answers with (Envoy's httpToGrpcStatus,
#: after grpc/doc/http-grpc-status-mapping.md); any other is UNKNOWN.
_FROM_HTTP: Final = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(value: str | None) -> float | None:
    """Seconds a ``grpc-timeout`` value allows (``1*8DIGIT`` and a unit of ``H M S m u
    n``); ``None`` when absent or malformed (then the route's timeout alone applies)."""
    if value is None or not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1]
    scale = _UNITS.get(unit)
    if scale is None or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) * scale


def grpc_reply(response: Response, timed_out: bool = False) -> Response:
    """The proxy's own answer ``response`` (a 503, a 404 ...) as a gRPC client can read
    it: HTTP 200 with no body, ``grpc-status`` from the HTTP status and ``grpc-message``
    from the text (a trailers-only response on HTTP/2). A timeout (``timed_out``) is
    DEADLINE_EXCEEDED, as Envoy answers an expired ``grpc-timeout`` (so that clients do
    not retry it as they would UNAVAILABLE)."""
    status = GRPC_STATUS["deadline-exceeded"] if timed_out else _FROM_HTTP.get(response.status, 2)
    text = response.body.decode("utf-8", "replace")
    fields = [
        ("content-type", "application/grpc"),
        ("grpc-status", str(status)),
        # grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
        ("grpc-message", urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")),
    ]
    for name, value in response.headers:
        if name not in ("content-type", "content-length"):
            fields.append((name, value))
    return Response(200, Headers._trusted(fields))
