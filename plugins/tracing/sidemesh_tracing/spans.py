"""The plugin's own span records and their Zipkin v2 JSON form.

The plugin keeps these itself, whatever the OpenTelemetry setup: with only
``opentelemetry-api`` installed the API makes no spans, and the sidecar must still
report to Zipkin.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SpanRecord", "endpoint_json", "now_us"]

Kind = Literal["SERVER", "CLIENT"]


def now_us() -> int:
    return time.time_ns() // 1000


@functools.lru_cache(maxsize=4096)
def _ip_field(host: str) -> tuple[str, str] | None:
    # Parsing an address costs more than the rest of a span; peers repeat.
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return ("ipv4" if isinstance(ip, ipaddress.IPv4Address) else "ipv6", str(ip))


def endpoint_json(
    service: str | None = None, host: str | None = None, port: int | None = None
) -> dict[str, Any]:
    """A Zipkin ``Endpoint``: the IP goes in ``ipv4``/``ipv6`` only when it is one (a
    host name has no field of its own in Zipkin v2)."""
    result: dict[str, Any] = {}
    if service:
        result["serviceName"] = service
    if host:
        field = _ip_field(host)
        if field is not None:
            result[field[0]] = field[1]
    if port:
        result["port"] = port
    return result


@dataclass(slots=True)
class SpanRecord:
    """One finished or in-flight span. Times in epoch microseconds."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: Kind
    start_us: int
    local_service: str
    duration_us: int = 0
    tags: dict[str, str | int] = field(default_factory=dict)
    remote: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    error: bool = False
    #: the caller's tracestate members (shared, never changed), for OTLP's span record.
    tracestate: list[tuple[str, str]] = field(default_factory=list)

    def finish(self, end_us: int | None = None) -> None:
        end = now_us() if end_us is None else end_us
        # Zipkin: durations under one microsecond are rounded up.
        self.duration_us = max(1, end - self.start_us)

    def to_zipkin(self) -> dict[str, Any]:
        span: dict[str, Any] = {
            "traceId": self.trace_id,
            "id": self.span_id,
            "name": self.name.lower(),
            "kind": self.kind,
            "timestamp": self.start_us,
            "duration": max(1, self.duration_us),
            "localEndpoint": {"serviceName": self.local_service},
            "tags": {key: str(value) for key, value in self.tags.items()},
        }
        if self.parent_id is not None:
            span["parentId"] = self.parent_id
        if self.remote:
            span["remoteEndpoint"] = self.remote
        if self.debug:
            span["debug"] = True
        return span
