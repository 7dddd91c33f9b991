"""Sidecar token endpoints (admin token only): issue, list, revoke."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidemesh.control.auth import (
    SERVICE_NAME,
    TOKEN_ID,
    TokenError,
    issue_token,
    token_id,
    token_state,
)
from sidemesh.control.http import ApiError, control_state, read_json_body, require
from sidemesh.control.store import TokenRecord

__all__ = ["token_body", "token_routes"]

log = logging.getLogger("sidemesh.control")


def token_body(record: TokenRecord, now: float | None = None) -> dict[str, Any]:
    """A token as listed: everything but its secret (never stored, never shown again)."""
    return {
        "id": record.id,
        "service": record.service,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "state": token_state(record, now),
    }


async def issue(request: Request) -> Response:
    await require(request, admin=True)
    body = await read_json_body(request, "TokenRequest")
    store = control_state(request).store
    try:
        token = await issue_token(store, body["service"], body.get("ttl"))
    except TokenError as exc:
        raise ApiError(422, str(exc)) from None
    record = await store.get_token(token_id(token))
    assert record is not None
    log.info("token %s issued for service %s", record.id, record.service)
    return JSONResponse({"id": record.id, "service": record.service, "token": token,
                         "created_at": record.created_at, "expires_at": record.expires_at})


async def list_tokens(request: Request) -> Response:
    await require(request, admin=True)
    service = request.query_params.get("service")
    if service is not None and not SERVICE_NAME.match(service):
        raise ApiError(422, f"{service!r} is not a service name")
    now = time.time()
    found = [token_body(r, now) for r in await control_state(request).store.tokens()
             if service is None or r.service == service]
    return JSONResponse({"tokens": found})


async def revoke(request: Request) -> Response:
    await require(request, admin=True)
    wanted: str = request.path_params["id"]
    if not TOKEN_ID.match(wanted):
        raise ApiError(422, f"{wanted!r} is not a token id (16 hex digits, as GET /v1/tokens "
                            "lists them)")
    state = control_state(request)
    record = await state.store.revoke_token(wanted, time.time())
    if record is None:
        raise ApiError(404, f"no token {wanted}")
    log.info("token %s of service %s revoked", record.id, record.service)
    return JSONResponse(token_body(record))


def token_routes() -> list[Route]:
    return [
        Route("/v1/tokens", issue, methods=["POST"]),
        Route("/v1/tokens", list_tokens, methods=["GET"]),
        Route("/v1/tokens/{id}", revoke, methods=["DELETE"]),
    ]
