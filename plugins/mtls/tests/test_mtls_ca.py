"""Certificates from a control plane's CA: a real HTTP server in front of the real
testing.control.CertificateAuthority, speaking the contract in the plugin's README."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from sidemesh_mtls_testkit import (
    NODE,
    TD,
    Pki,
    call,
    control,
    listener_policy,
    route_policy,
    serve,
    sid,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sidemesh import ConnectionSetup, testing
from sidemesh_mtls.identity import IdentityError, IdentityUnavailable, build_identity
from sidemesh_mtls.manager import IdentityManager
from sidemesh_mtls.sources import CAIdentitySource

TOKENS = {"tok-reviews": "reviews", "tok-productpage": "productpage"}


@dataclass
class ControlPlane:
    url: str
    ttl: float
    bodies: list[dict[str, Any]] = field(default_factory=list)


def certificates_app(ca: testing.control.CertificateAuthority, plane: ControlPlane) -> Starlette:
    async def certificates(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        service = TOKENS.get(auth.removeprefix("Bearer "))
        if service is None:
            return JSONResponse({"error": "invalid token"}, status_code=401)
        body = await request.json()
        plane.bodies.append(body)
        try:
            answer = ca.certificate_response(
                body["csr"].encode(), namespace="default", service=service, ttl=plane.ttl
            )
        except testing.control.CertificateRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(answer)

    return Starlette(routes=[Route("/v1/certificates", certificates, methods=["POST"])])


@asynccontextmanager
async def control_plane(
    ca: testing.control.CertificateAuthority, ttl: float = 3600
) -> AsyncIterator[ControlPlane]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    plane = ControlPlane(f"http://127.0.0.1:{sock.getsockname()[1]}", ttl)
    server = uvicorn.Server(
        uvicorn.Config(certificates_app(ca, plane), log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # uvicorn has no "started" event to wait on
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "the test control plane did not start"
        yield plane
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


def test_fetch_gets_the_identity_bound_to_the_token(pki: Pki) -> None:
    async def main() -> None:
        async with control_plane(pki.ca) as plane:
            source = CAIdentitySource(control(plane.url), service="reviews", namespace="default")
            identity = build_identity(await source.fetch(), TD)
            assert identity.spiffe_id == sid("reviews")
            # The key stays here: the request carried a CSR and nothing else.
            assert list(plane.bodies[0]) == ["csr"]
            assert "PRIVATE KEY" not in json.dumps(plane.bodies[0])

            bad = CAIdentitySource(
                control(plane.url, "stolen"), service="reviews", namespace="default"
            )
            with pytest.raises(IdentityError, match="401 invalid token"):
                await bad.fetch()

    asyncio.run(main())


def test_policy_takes_its_identity_from_the_control_plane(
    pki: Pki,
) -> None:
    client = build_identity(pki.issue("productpage"))

    async def main() -> dict[str, Any]:
        async with control_plane(pki.ca) as plane:
            policy = listener_policy({"mode": "strict", "allow": None}, control=control(plane.url))
            try:
                async with asyncio.timeout(10):
                    identity = await policy.manager.wait_ready()
                assert identity.spiffe_id == sid("reviews")
                setup = ConnectionSetup("listener", "inbound")
                policy.connection_setup(setup)
                assert setup.ssl_context is not None
                async with serve(setup.ssl_context, policy) as (port, _):
                    return await call(port, client.client_context)
            finally:
                await policy.close()

    answer = asyncio.run(main())
    assert answer["status"] == 200 and answer["peer"] == sid("productpage")


def test_rotation_from_the_ca_drops_no_connection(
    pki: Pki,
) -> None:
    async def main() -> tuple[list[dict[str, Any]], int, int]:
        # 3 s certificates: renewed every ~1.5 s on both sides.
        async with control_plane(pki.ca, ttl=3) as plane:
            inbound = listener_policy({"allow": [sid("productpage")]}, control=control(plane.url))
            outbound = IdentityManager(
                CAIdentitySource(
                    control(plane.url, "tok-productpage"),
                    service="productpage",
                    namespace="default",
                ),
                TD,
            )
            results: list[dict[str, Any]] = []
            try:
                async with asyncio.timeout(15):
                    await inbound.manager.wait_ready()
                    await outbound.wait_ready()
                setup = ConnectionSetup("listener", "inbound")
                inbound.connection_setup(setup)
                assert setup.ssl_context is not None
                async with serve(setup.ssl_context, inbound) as (port, _):
                    loop = asyncio.get_running_loop()
                    end = loop.time() + 4.0

                    async def client() -> None:
                        while loop.time() < end:
                            ctx = outbound.require().client_context
                            results.append(await call(port, ctx))
                            await asyncio.sleep(0.01)

                    async with asyncio.timeout(30):
                        await asyncio.gather(client(), client())
                return results, inbound.manager.rotations, outbound.rotations
            finally:
                await inbound.close()
                await outbound.stop()

    results, server_rotations, client_rotations = asyncio.run(main())
    assert [r for r in results if r.get("status") != 200] == []
    assert server_rotations >= 2 and client_rotations >= 2
    assert len({r["server_serial"] for r in results}) >= 3


def test_unreachable_control_plane_is_a_clear_connection_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening

        async def main() -> None:
            policy = route_policy({}, node={**NODE, "service": "unreachable"}, control=control(url))
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(1.5):
                        await policy.manager.wait_ready()
                with pytest.raises(IdentityUnavailable, match="no workload certificate yet"):
                    policy.connection_setup(ConnectionSetup("upstream", "outbound"))
                assert policy.manager.last_error
            finally:
                await policy.close()

        asyncio.run(main())
