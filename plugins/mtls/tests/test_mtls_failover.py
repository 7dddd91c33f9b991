"""Certificates from a control plane of several replicas: a replica that is down, or that
answers 5xx, hands the certificate request to the next one (real control planes)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from sidemesh_mtls_testkit import NODE, TD, route_policy, sid

from sidemesh import ControlPlane, testing
from sidemesh_mtls.identity import build_identity
from sidemesh_mtls.sources import CAIdentitySource


def _bundle(cp: testing.control.ControlServer) -> str:
    answer = httpx.get(f"{cp.url}/v1/trust-bundle", timeout=5)
    bundle: str = answer.json()["trust_bundle"]
    return bundle


def test_the_certificate_comes_from_the_next_replica_when_the_first_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with testing.control.ControlServer(tmp_path / "cp2") as cp2:
        with testing.control.ControlServer(tmp_path / "cp1") as cp1:
            down = cp1.url
        token = cp2.token("reviews")
        plane = ControlPlane(down, lambda: token, None, (down, cp2.url))
        source = CAIdentitySource(plane, service="reviews", namespace="default")
        with caplog.at_level(logging.WARNING, logger="sidemesh.mtls"):
            material = asyncio.run(source.fetch())
        bundle = _bundle(cp2)

    assert build_identity(material, TD).spiffe_id == sid("reviews")
    assert material.bundle_pem.decode() == bundle  # signed by the second replica's CA
    assert material.source == f"control plane {cp2.url}/v1/certificates"
    # The replica in use moved for every user of the control plane (the sidecar's own
    # long poll goes there next), and the log says so.
    assert plane.url == cp2.url
    assert f"mtls: control plane {down} unreachable (ConnectError): trying {cp2.url}" in (
        caplog.text
    )


def test_a_replica_answering_5xx_is_passed_over_and_policies_get_their_identity(
    tmp_path: Path,
) -> None:
    broken = testing.Upstream(lambda _: testing.Reply(status=503, body=b'{"error": "down"}'))
    with broken, testing.control.ControlServer(tmp_path / "cp") as cp:
        failing = f"http://{broken.address}"
        token = cp.token("reviews")
        plane = ControlPlane(failing, lambda: token, None, (failing, cp.url))

        async def main() -> None:
            policy = route_policy({}, node=NODE, control=plane)
            try:
                async with asyncio.timeout(10):
                    identity = await policy.manager.wait_ready()
                assert identity.spiffe_id == sid("reviews")
            finally:
                await policy.close()

        asyncio.run(main())
        assert plane.url == cp.url
        assert [r.path for r in broken.requests] == ["/v1/certificates"]


def test_when_no_replica_answers_the_last_error_is_raised(tmp_path: Path) -> None:
    with testing.control.ControlServer(tmp_path / "a") as a:
        first = a.url
    with testing.control.ControlServer(tmp_path / "b") as b:
        second = b.url
    plane = ControlPlane(first, lambda: "t", None, (first, second))
    source = CAIdentitySource(plane, service="reviews", namespace="default")
    with pytest.raises(httpx.ConnectError):
        asyncio.run(source.fetch())
    # Each replica was asked once; the next fetch (after the manager's back-off) starts
    # where this one ended.
    assert plane.url == second
