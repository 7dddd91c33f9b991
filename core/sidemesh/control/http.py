"""What every control API handler shares: the state, authentication, bounded bodies,
JSON errors."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.source import check_nesting
from sidemesh.config.validate import ConfigInvalid, parse_yaml
from sidemesh.control.auth import SERVICE_NAME, Principal, TokenRefused, authenticate, token_id
from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.metrics import ControlMetrics, MeteredStore
from sidemesh.control.openapi import request_validator
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE
from sidemesh.control.store import Store

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "ControlState",
    "Hub",
    "control_state",
    "error",
    "read_config_body",
    "read_json_body",
    "require",
    "service_param",
]

#: Request bodies larger than this are refused with 413 before being parsed.
MAX_BODY_BYTES = 1024 * 1024


class Hub:
    """Wakes the long polls of a service when it gets a new version."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closing = asyncio.Event()

    def event(self, service: str) -> asyncio.Event:
        return self._events.setdefault(service, asyncio.Event())

    def publish(self, service: str) -> None:
        # Waiters hold the old event; the next watch of this service gets a fresh one.
        event = self._events.pop(service, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Shutting down: every waiter returns now rather than holding the shutdown."""
        self.closing.set()


@dataclass
class ControlState:
    """What the handlers share. ``store`` becomes a :class:`MeteredStore` of the store
    given, kept as ``backend``: every call the API makes is timed and its failures
    counted."""

    store: Store
    registry: PluginRegistry
    admin_token: str
    data_dir: Path
    hub: Hub = field(default_factory=Hub)
    max_proxies_per_service: int = MAX_PROXIES_PER_SERVICE
    metrics: ControlMetrics = field(default_factory=ControlMetrics)
    backend: Store = field(init=False)

    def __post_init__(self) -> None:
        self.backend = self.store
        self.store = MeteredStore(self.store, self.metrics)

    @property
    def store_kind(self) -> str:
        """``sqlite`` or ``etcd``: the name of the backend's module."""
        return type(self.backend).__module__.rpartition(".")[2]

    async def start(self) -> None:
        """Wake the long polls of every change the store reports (other replicas' too)."""
        await self.store.start(self.hub.publish)

    async def authority(self, trust_domain: str) -> CertificateAuthority:
        """The CA of ``trust_domain``, created on first use (kept by the store)."""
        return await self.store.authority(trust_domain)


class ApiError(Exception):
    """Answered as ``{"error": message, **extra}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def control_state(request: Request) -> ControlState:
    """The state of the app serving ``request``."""
    state: ControlState = request.app.state.control
    return state


def service_param(request: Request) -> str:
    """The ``{service}`` of the path. :raises ApiError: 422 when it is not a service name."""
    service: str = request.path_params["service"]
    if not SERVICE_NAME.match(service):
        raise ApiError(422, f"{service!r} is not a service name")
    return service


async def require(request: Request, service: str | None = None, admin: bool = False
                  ) -> Principal:
    """The authenticated caller; the admin may do anything, a sidecar token only reads
    its own service (``service``) and never writes (``admin=True``).

    :raises ApiError: 401 without a valid token, 403 when the token may not do this.
    """
    state: ControlState = request.app.state.control
    header = request.headers.get("authorization")
    try:
        principal = await authenticate(header, state.admin_token, state.store)
    except TokenRefused:
        state.metrics.tokens_refused.labels(await _refusal(state, header)).inc()
        raise
    if principal is None:
        state.metrics.tokens_refused.labels("invalid" if header else "missing").inc()
        raise ApiError(401, "missing or invalid token (Authorization: Bearer <token>)")
    if principal.admin:
        return principal
    if admin:
        raise ApiError(403, f"{principal.name} may not do this: it needs the admin token")
    if service is not None and principal.service != service:
        raise ApiError(403, f"{principal.name} may not access service {service!r}")
    return principal


async def _refusal(state: ControlState, header: str | None) -> str:
    """``expired`` or ``revoked``: why :func:`authenticate` refused this genuine token."""
    assert header is not None
    record = await state.store.get_token(token_id(header.partition(" ")[2]))
    return "revoked" if record is None or record.revoked_at is not None else "expired"


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"body of {length} bytes is larger than {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


async def read_config_body(request: Request) -> Any:
    """A config from a JSON or YAML body.

    :raises ApiError: 413/415, or 422 with the parse error in the config error shape.
    """
    body = await _read_body(request)
    media = _media_type(request)
    if media in _YAML_TYPES:
        try:
            return parse_yaml(body, "request body")
        except ConfigInvalid as exc:
            raise ApiError(422, str(exc), errors=[e.as_dict() for e in exc.errors]) from None
    if media not in ("application/json", ""):
        raise ApiError(415, f"send application/json or application/yaml, not {media}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = {"path": "", "message": f"request body: not JSON: {exc}", "plugin": None,
                  "plugin_version": None, "rule": "json"}
        raise ApiError(422, "request body is not JSON", errors=[detail]) from None
    try:
        # As parse_yaml does: validation recurses once per level.
        return check_nesting(doc, "request body")
    except ConfigInvalid as exc:
        raise ApiError(422, str(exc), errors=[e.as_dict() for e in exc.errors]) from None


async def read_json_body(request: Request, schema: str) -> dict[str, Any]:
    """A JSON (or YAML) request body valid against the OpenAPI component ``schema``.

    :raises ApiError: 413/415, or 422 naming every problem (unknown fields too).
    """
    body = await _read_body(request)
    media = _media_type(request)
    try:
        if media in _YAML_TYPES:
            doc: Any = parse_yaml(body, "request body")
        elif media in ("application/json", ""):
            doc = check_nesting(json.loads(body), "request body")
        else:
            raise ApiError(415, f"send application/json or application/yaml, not {media}")
    except ConfigInvalid as exc:
        raise ApiError(422, exc.errors[0].message) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, f"request body is not JSON: {exc}") from None
    problems = sorted(request_validator(schema).iter_errors(doc), key=lambda e: e.path)
    if problems:
        details = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}"
            for e in problems
        ]
        raise ApiError(422, "invalid request body: " + "; ".join(details))
    result: dict[str, Any] = doc
    return result
