"""The service registry: sidecars register their instances, operators list them."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidemesh.api.spiffe import SpiffeIdError, workload_id
from sidemesh.control.discovery import DEFAULT_INSTANCE_TTL
from sidemesh.control.http import (
    ApiError,
    control_state,
    read_json_body,
    require,
    service_param,
)
from sidemesh.control.routes_proxies import service_identity
from sidemesh.control.store import Instance
from sidemesh.control.validation import check_proxy_id

__all__ = ["service_routes"]


async def register(request: Request) -> Response:
    """Register, or heartbeat, an instance: the same PUT again before its TTL passes."""
    service = service_param(request)
    instance_id = check_proxy_id(request.path_params["id"])
    await require(request, service)
    body = await read_json_body(request, "InstanceRequest")
    state = control_state(request)
    # The identity listed is the one this control plane's CA issues to the service (as
    # for certificates, the token decides it): a caller cannot register an instance that
    # claims another service's identity, which peers would then expect of it.
    trust_domain, namespace = await service_identity(state, service)
    try:
        identity = workload_id(trust_domain, namespace, service)
    except SpiffeIdError as exc:
        raise ApiError(422, str(exc)) from None
    claimed = body.get("identity")
    if claimed is not None and claimed != identity:
        raise ApiError(422, f"identity {claimed!r} is not the one service {service!r} is "
                            f"issued ({identity})")
    ttl = float(body.get("ttl", DEFAULT_INSTANCE_TTL))
    now = time.time()
    instance = Instance(service, instance_id, body["address"], dict(body.get("labels", {})),
                        identity, now, now + ttl)
    await state.store.register_instance(instance, ttl)
    return JSONResponse({"service": service, "id": instance_id, "ttl": ttl,
                         "expires_at": instance.expires_at})


async def deregister(request: Request) -> Response:
    service = service_param(request)
    instance_id = check_proxy_id(request.path_params["id"])
    await require(request, service)
    if not await control_state(request).store.deregister_instance(service, instance_id):
        raise ApiError(404, f"service {service!r} has no instance {instance_id!r}")
    return Response(status_code=204)


async def endpoints(request: Request) -> Response:
    """Live instances only: one past its TTL is gone (there is no "unhealthy" state to
    report, as in Envoy's EDS, where a host that left is removed)."""
    service = service_param(request)
    await require(request, service)
    found = await control_state(request).store.instances(service)
    now = time.time()
    return JSONResponse({"service": service, "endpoints": [
        {**i.describe(), "health": "HEALTHY", "ttl_left": round(max(0.0, i.expires_at - now), 3)}
        for i in found]})


def service_routes() -> list[Route]:
    return [
        Route("/v1/services/{service}/instances/{id}", register, methods=["PUT"]),
        Route("/v1/services/{service}/instances/{id}", deregister, methods=["DELETE"]),
        Route("/v1/services/{service}/endpoints", endpoints, methods=["GET"]),
    ]
