"""Config endpoints: store, read, history, rollback, validate, schemas, watch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidemesh.config.registry import composed_schema
from sidemesh.config.validate import ConfigError, validate
from sidemesh.control.discovery import referenced_services, resolve
from sidemesh.control.http import (
    ApiError,
    ControlState,
    control_state,
    read_config_body,
    read_json_body,
    require,
    service_param,
)
from sidemesh.control.store import ConfigVersion, VersionNotFound
from sidemesh.control.validation import check_proxy_id, claimed_proxy

__all__ = ["DEFAULT_WATCH_TIMEOUT", "MAX_WATCH_TIMEOUT", "config_routes"]

DEFAULT_WATCH_TIMEOUT = 30.0
MAX_WATCH_TIMEOUT = 300.0


def _config_body(version: ConfigVersion) -> dict[str, Any]:
    return {"service": version.service, **version.summary(), "config": version.config}


def _check(doc: Any, state: ControlState, service: str | None) -> None:
    """The proxy's own validation; plus, when storing, the config must be the service's.

    :raises ApiError: 422 with every error.
    """
    errors = validate(doc, state.registry)
    if service is not None and isinstance(doc, dict):
        node = doc.get("node")
        named = node.get("service") if isinstance(node, dict) else None
        if isinstance(named, str) and named != service:
            errors.append(ConfigError(
                "node.service", f"the config is for service {named!r}, but it is being "
                f"stored for {service!r}", rule="service"))
    if errors:
        count = len(errors)
        raise ApiError(422, f"invalid config ({count} error{'s' if count != 1 else ''})",
                       errors=[e.as_dict() for e in errors])


async def put_config(request: Request) -> Response:
    service = service_param(request)
    principal = await require(request, service, admin=True)
    state = control_state(request)
    doc = await read_config_body(request)
    _check(doc, state, service)
    head = await state.store.get_config(service)
    stored = await state.store.put_config(service, doc, principal.name)
    unchanged = head is not None and head.version == stored.version
    if not unchanged:
        state.metrics.config_writes.labels(service, "put").inc()
    return JSONResponse({"service": service, "version": stored.version,
                         "digest": stored.digest, "unchanged": unchanged})


async def get_config(request: Request) -> Response:
    service = service_param(request)
    await require(request, service)
    raw = request.query_params.get("version")
    version: int | None = None
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise ApiError(422, f"version must be a positive integer, not {raw!r}")
        version = int(raw)
    found = await control_state(request).store.get_config(service, version)
    if found is None:
        what = f"version {version}" if version is not None else "a config"
        raise ApiError(404, f"service {service!r} has no {what}")
    return JSONResponse(_config_body(found))


async def history(request: Request) -> Response:
    service = service_param(request)
    await require(request, service)
    versions = await control_state(request).store.history(service)
    return JSONResponse({"service": service, "versions": [v.summary() for v in versions]})


async def rollback(request: Request) -> Response:
    service = service_param(request)
    principal = await require(request, service, admin=True)
    state = control_state(request)
    body = await read_json_body(request, "RollbackRequest")
    target = await state.store.get_config(service, body["version"])
    if target is None:
        raise ApiError(404, f"service {service!r} has no version {body['version']}")
    # The old version passed validation with the plugins of its day; these may differ.
    _check(target.config, state, service)
    try:
        stored = await state.store.rollback(service, body["version"], principal.name)
    except VersionNotFound as exc:
        raise ApiError(404, str(exc)) from None
    state.metrics.config_writes.labels(service, "rollback").inc()
    return JSONResponse({"service": service, "version": stored.version,
                         "digest": stored.digest, "rollback_of": body["version"]})


async def validate_config(request: Request) -> Response:
    await require(request)
    doc = await read_config_body(request)
    _check(doc, control_state(request), None)
    return JSONResponse({"valid": True, "errors": []})


async def schemas(request: Request) -> Response:
    await require(request)
    return JSONResponse(composed_schema(control_state(request).registry))


async def plugin_schema(request: Request) -> Response:
    await require(request)
    registry = control_state(request).registry
    name = request.path_params["plugin"]
    policy = registry.get(name)
    if policy is None:
        failure = registry.load_error(name)
        reason = str(failure) if failure else (
            f"unknown plugin {name!r} (installed: {', '.join(registry.names()) or 'none'})")
        raise ApiError(404, reason)
    return JSONResponse({"name": policy.name, "version": policy.version,
                         "distribution": policy.distribution, "schema_id": policy.schema_id,
                         "schema": policy.schema})


def _number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be a number, not {raw!r}") from None
    if not value >= 0:
        raise ApiError(422, f"{name} must be >= 0, not {raw!r}")
    return value


async def watch(request: Request) -> Response:
    """Answer as soon as the head differs from ``after`` (newer, or older when the store
    was reset behind the proxy's back), or, for a caller that says which
    ``endpoints_version`` it has, as soon as the endpoints of the services its config
    names differ; else ``304`` at the timeout."""
    service = service_param(request)
    principal = await require(request, service)
    state = control_state(request)
    after = int(_number(request, "after", 0))
    caller_endpoints = request.query_params.get("endpoints_version")
    timeout = min(_number(request, "timeout", DEFAULT_WATCH_TIMEOUT), MAX_WATCH_TIMEOUT)
    proxy = request.query_params.get("proxy")
    if proxy is not None:
        check_proxy_id(proxy)
        if not principal.admin:
            with claimed_proxy():
                await state.store.touch_proxy(proxy, service,
                                              limit=state.max_proxies_per_service)
    deadline = time.monotonic() + timeout
    gone = asyncio.ensure_future(_disconnected(request))
    watchers = state.metrics.watchers.labels(service)
    watchers.inc()
    try:
        while True:
            # Take the event before reading the store: a version stored in between still
            # wakes this waiter.
            event = state.hub.event(service)
            current = await state.store.get_config(service)
            named = referenced_services(current.config) if current is not None else []
            # The instances of the services it names wake it too (their events are taken
            # before they are read, as above).
            events = [event, *(state.hub.event(name) for name in named)]
            if current is not None:
                endpoints, endpoints_version = await resolve(state.store, named)
                if current.version != after or (
                        named and caller_endpoints is not None
                        and caller_endpoints != endpoints_version):
                    state.metrics.pushes.labels(service).inc()
                    return JSONResponse({**_config_body(current), "endpoints": endpoints,
                                         "endpoints_version": endpoints_version})
            # Not kept while parked: a thousand polls would hold a thousand copies.
            current = None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or state.hub.closing.is_set() or gone.done():
                return Response(status_code=304)
            closing = asyncio.ensure_future(state.hub.closing.wait())
            woken = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait({closing, *woken, gone}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                for waiter in woken:
                    waiter.cancel()
            if gone.done():
                # Nobody to answer: stop waiting now, not at the timeout.
                return Response(status_code=304)
            # A token revoked (or expired) while this poll waited is refused here, before
            # it is handed anything (a revocation wakes the service's polls for this).
            await require(request, service)
    finally:
        gone.cancel()
        watchers.dec()


async def _disconnected(request: Request) -> None:
    """Return when the client has closed its connection (a body it sent is dropped)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def config_routes() -> list[Route]:
    return [
        Route("/v1/services/{service}/config", put_config, methods=["PUT"]),
        Route("/v1/services/{service}/config", get_config, methods=["GET"]),
        Route("/v1/services/{service}/history", history, methods=["GET"]),
        Route("/v1/services/{service}/rollback", rollback, methods=["POST"]),
        Route("/v1/services/{service}/watch", watch, methods=["GET"]),
        Route("/v1/validate", validate_config, methods=["POST"]),
        Route("/v1/schemas", schemas, methods=["GET"]),
        Route("/v1/schemas/{plugin}", plugin_schema, methods=["GET"]),
    ]
