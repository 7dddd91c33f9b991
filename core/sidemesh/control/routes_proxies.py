"""Proxy-facing endpoints: ACK/NACK status, the proxy list, certificates, trust bundles."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidemesh.api.spiffe import SpiffeIdError, validate_trust_domain
from sidemesh.control.ca import DEFAULT_TTL, CertificateAuthorityError, CertificateRequestError
from sidemesh.control.http import ApiError, ControlState, control_state, read_json_body, require
from sidemesh.control.store import ProxyStatus
from sidemesh.control.validation import check_proxy_id, claimed_proxy

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_TRUST_DOMAIN", "proxy_routes", "service_identity"]

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_NAMESPACE = "default"


def _proxy_body(status: ProxyStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "service": status.service,
        "state": status.state,
        "version": status.version,
        "applied_version": status.applied,
        "error": status.error,
        "plugins": status.plugins,
        "last_seen": status.last_seen,
    }


async def report_status(request: Request) -> Response:
    proxy_id = check_proxy_id(request.path_params["id"])
    principal = await require(request)
    body = await read_json_body(request, "StatusRequest")
    if not principal.admin and body["service"] != principal.service:
        raise ApiError(403, f"{principal.name} may not report for service "
                            f"{body['service']!r}")
    state = control_state(request)
    applied = body.get("applied_version")
    if applied is None and body["state"] == "ACK":
        applied = body["version"]
    error = body.get("error") if body["state"] == "NACK" else None
    # Still None: the store keeps the applied version recorded before.
    with claimed_proxy():
        await state.store.record_status(ProxyStatus(
            proxy_id, body["service"], body["state"], body["version"], applied, error,
            body["plugins"], time.time()), limit=state.max_proxies_per_service)
    counter = state.metrics.acks if body["state"] == "ACK" else state.metrics.nacks
    counter.labels(body["service"]).inc()
    return JSONResponse({"id": proxy_id, "recorded": True})


async def proxies(request: Request) -> Response:
    await require(request, admin=True)
    found = await control_state(request).store.proxies()
    return JSONResponse({"proxies": [_proxy_body(p) for p in found]})


async def service_identity(state: ControlState, service: str) -> tuple[str, str]:
    """The trust domain and namespace of ``service``: its stored config's ``node``."""
    current = await state.store.get_config(service)
    node = current.config.get("node", {}) if current is not None else {}
    node = node if isinstance(node, dict) else {}
    return (str(node.get("trust_domain") or DEFAULT_TRUST_DOMAIN),
            str(node.get("namespace") or DEFAULT_NAMESPACE))


async def certificates(request: Request) -> Response:
    principal = await require(request)
    if principal.service is None:
        raise ApiError(403, "certificates are issued to sidecar tokens: the token decides "
                            "the identity, and the admin token has none")
    body = await read_json_body(request, "CertificateRequest")
    state = control_state(request)
    trust_domain, namespace = await service_identity(state, principal.service)
    try:
        ca = await state.authority(trust_domain)
        answer = ca.certificate_response(
            body["csr"].encode(), namespace=namespace, service=principal.service,
            ttl=float(body.get("ttl", DEFAULT_TTL)))
    except (CertificateRequestError, SpiffeIdError) as exc:
        state.metrics.certificate_errors.inc()
        raise ApiError(422, str(exc)) from None
    except CertificateAuthorityError as exc:
        state.metrics.certificate_errors.inc()
        raise ApiError(500, f"certificate authority unavailable: {exc}") from None
    state.metrics.certificates_issued.labels(trust_domain).inc()
    return JSONResponse(answer)


async def trust_bundle(request: Request) -> Response:
    trust_domain = request.query_params.get("trust_domain", DEFAULT_TRUST_DOMAIN)
    try:
        validate_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        raise ApiError(422, str(exc)) from None
    state = control_state(request)
    # Only the trust domains certificates are issued in (service_identity): this call needs
    # no token, and must never create a CA (key, files, memory) for a name it is sent.
    if (trust_domain != DEFAULT_TRUST_DOMAIN
            and trust_domain not in await state.store.trust_domains()):
        raise ApiError(404, f"{trust_domain!r} is not a trust domain of this control plane "
                            f"(it has {DEFAULT_TRUST_DOMAIN} and those its services' configs "
                            "name in node.trust_domain)")
    try:
        pem = (await state.authority(trust_domain)).trust_bundle_pem().decode("ascii")
    except CertificateAuthorityError as exc:
        raise ApiError(500, f"certificate authority unavailable: {exc}") from None
    if "application/x-pem-file" in request.headers.get("accept", ""):
        return Response(pem, media_type="application/x-pem-file")
    return JSONResponse({"trust_domain": trust_domain, "trust_bundle": pem})


def proxy_routes() -> list[Route]:
    return [
        Route("/v1/proxies/{id}/status", report_status, methods=["POST"]),
        Route("/v1/proxies", proxies, methods=["GET"]),
        Route("/v1/certificates", certificates, methods=["POST"]),
        Route("/v1/trust-bundle", trust_bundle, methods=["GET"]),
    ]
