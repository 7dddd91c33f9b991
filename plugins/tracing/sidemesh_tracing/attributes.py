"""Span names and attributes: OpenTelemetry HTTP semantic conventions, plus the
Envoy tag names platform engineers already search by (``upstream_cluster``,
``response_flags``, ``guid:x-request-id``...)."""

from __future__ import annotations

import functools
from typing import Any

from sidemesh import Attempt, EndpointView, Request, Response, ResponseFlag

from .spans import SpanRecord, endpoint_json

__all__ = ["client_tags", "finish_client", "finish_server", "server_tags", "split_host_port"]


@functools.lru_cache(maxsize=4096)
def split_host_port(address: str) -> tuple[str, int | None]:
    """``host:port`` (``[v6]:port`` too) into its parts; the port is ``None`` if absent."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    return host, int(port) if port.isdigit() else None


@functools.lru_cache(maxsize=4096)
def _peer(address: str) -> tuple[str, int | None, dict[str, Any]]:
    # A connection's requests share its peer (keep-alive): split and describe it once.
    # The endpoint dictionary is shared by those spans, so it is never changed in place.
    host, port = split_host_port(address)
    return host, port, endpoint_json(None, host, port)


@functools.lru_cache(maxsize=1024)
def _upstream(cluster: str, host: str, port: int) -> dict[str, Any]:
    # Shared by every span to this endpoint, like _peer's.
    return endpoint_json(cluster, host, port)


def server_tags(
    request: Request, request_id: str
) -> tuple[dict[str, str | int], dict[str, Any]]:
    """The server span's attributes known when the request arrives, and the remote
    endpoint (the downstream peer)."""
    path, _, query = request.path.partition("?")
    host, port = split_host_port(request.host)
    peer_host, peer_port, remote = _peer(request.connection.client_address)
    tags: dict[str, str | int] = {
        "component": "proxy",
        "http.request.method": request.method,
        "url.path": path,
        "url.scheme": request.scheme,
        "network.protocol.version": request.version,
        "server.address": host,
        "network.peer.address": peer_host,
        "guid:x-request-id": request_id,
    }
    if query:
        tags["url.query"] = query
    if port is not None:
        tags["server.port"] = port
    if peer_port is not None:
        tags["network.peer.port"] = peer_port
    agent = request.headers.get("user-agent")
    if agent is not None:
        tags["user_agent.original"] = agent
    if request.route:
        tags["route_name"] = request.route
        tags["http.route"] = request.route
    if request.listener:
        tags["listener"] = request.listener
    return tags, remote


def client_tags(
    request: Request, endpoint: EndpointView | None, request_id: str, number: int
) -> dict[str, str | int]:
    tags: dict[str, str | int] = {
        "component": "proxy",
        "http.request.method": request.method,
        "url.path": request.path.partition("?")[0],
        "upstream_cluster": request.cluster,
        "guid:x-request-id": request_id,
    }
    if number > 1:
        tags["http.request.resend_count"] = number - 1
    if endpoint is not None:
        tags["upstream_address"] = endpoint.address
        tags["server.address"] = endpoint.host
        tags["server.port"] = endpoint.port
        tags["network.peer.address"] = endpoint.host
        tags["network.peer.port"] = endpoint.port
    return tags


def _status(
    span: SpanRecord, status: int | None, flag: ResponseFlag | None, error: str | None
) -> None:
    if status is not None:
        span.tags["http.response.status_code"] = status
    if flag:
        span.tags["response_flags"] = flag
    if (status is not None and status >= 500) or (status is None and (flag or error)):
        span.error = True
        span.tags["error"] = error or (f"HTTP {status}" if status is not None else flag or "")
        span.tags["otel.status_code"] = "ERROR"


def finish_client(span: SpanRecord, attempt: Attempt) -> None:
    """Close an attempt's span: status, flag, error, the upstream as remote endpoint."""
    endpoint = attempt.endpoint
    if endpoint is not None:
        span.remote = _upstream(endpoint.cluster, endpoint.host, endpoint.port)
        span.tags["upstream_address"] = endpoint.address
    response = attempt.response
    _status(span, response.status if response is not None else None, attempt.flag, attempt.error)
    duration = attempt.duration
    if duration > 0:
        span.duration_us = max(1, int(duration * 1_000_000))
    else:
        span.finish()


def finish_server(span: SpanRecord, request: Request, response: Response | None,
                  flag: ResponseFlag | None) -> None:
    if request.cluster:
        span.tags["upstream_cluster"] = request.cluster
    if request.tried:
        span.tags["upstream_address"] = request.tried[-1].address
    if request.route and "route_name" not in span.tags:
        span.tags["route_name"] = request.route
    _status(span, response.status if response is not None else None, flag, None)
    grpc_tags(span, request, response)
    span.finish()


def grpc_tags(span: SpanRecord, request: Request, response: Response | None) -> None:
    """Envoy's gRPC tags, from the trailers (or a trailers-only head): a gRPC error
    travels in a 200 answer, so a non-zero status marks the span as an error."""
    code = response.grpc_status if response is not None and request.is_grpc else None
    if response is None or code is None:
        return
    span.tags["grpc.status_code"] = code
    message = (response.trailers or response.headers).get("grpc-message")
    if message:
        span.tags["grpc.message"] = message
    if code != 0 and not span.error:
        span.error = True
        span.tags["error"] = f"gRPC status {code}"
        span.tags["otel.status_code"] = "ERROR"
