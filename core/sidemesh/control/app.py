"""The control API as a Starlette app."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidemesh import __version__
from sidemesh.control.auth import TokenRefused
from sidemesh.control.http import ApiError, ControlState, error, require
from sidemesh.control.openapi import openapi_document
from sidemesh.control.routes_config import config_routes
from sidemesh.control.routes_proxies import proxy_routes
from sidemesh.control.routes_services import service_routes
from sidemesh.control.routes_tokens import token_routes
from sidemesh.control.store import StoreUnavailable

__all__ = ["HEALTH_TIMEOUT", "create_app"]

#: Seconds the store has to answer a ``GET /healthz``: a probe must not hang on a store
#: that does not answer (etcd without quorum), it must fail.
HEALTH_TIMEOUT = 2.0

log = logging.getLogger("sidemesh.control")


class _NoTracebacks:
    """Any unexpected exception becomes a JSON 500 (logged here, never sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = JSONResponse({"error": "internal error (see the control plane's "
                                                  "log)"}, status_code=500)
                await response(scope, receive, send)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error(exc.status, str(exc), **exc.extra)


async def _token_refused(_: Request, exc: Exception) -> Response:
    return error(401, str(exc))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), ) if exc.status_code != 304 else Response(
        status_code=304)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreUnavailable)
    log.error("%s %s: %s", request.method, request.url.path, exc)
    # 507 Insufficient Storage says what to fix; anything else SQLite refuses is a 503.
    return error(507 if exc.full else 503, str(exc))


async def _openapi(request: Request) -> Response:
    await require(request)
    return JSONResponse(openapi_document())


async def _healthz(request: Request) -> Response:
    """No token: load balancers and kubelets probe it. Healthy when the store answers.
    The version is for ``sidemesh version`` (istiod's and Envoy's tell theirs unasked too)."""
    state: ControlState = request.app.state.control
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await state.store.ping()
    except StoreUnavailable as exc:
        reason = str(exc)
    except TimeoutError:
        reason = f"the store did not answer within {HEALTH_TIMEOUT:g}s"
    else:
        return JSONResponse({"status": "ok", "store": state.store_kind, "version": __version__})
    log.warning("health check failed: %s", reason)
    return JSONResponse({"status": "unavailable", "store": state.store_kind,
                         "version": __version__, "error": reason}, status_code=503)


async def _metrics(request: Request) -> Response:
    """No token, as Istio's and Envoy's: counts and service names, no config, no secret
    (docs/security.md)."""
    state: ControlState = request.app.state.control
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(state: ControlState) -> Starlette:
    app = Starlette(
        routes=[*config_routes(), *token_routes(), *proxy_routes(), *service_routes(),
                Route("/openapi.json", _openapi), Route("/healthz", _healthz),
                Route("/metrics", _metrics)],
        exception_handlers={ApiError: _api_error, TokenRefused: _token_refused,
                            StoreUnavailable: _store_unavailable, HTTPException: _http_error},
    )
    app.state.control = state
    app.add_middleware(_NoTracebacks)
    return app
