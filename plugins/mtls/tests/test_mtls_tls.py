"""Real TLS handshakes with the plugin's contexts: who gets in, who is refused, and
rotation without a single failed connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sidemesh_mtls_testkit import (
    NODE,
    Pki,
    call,
    listener_policy,
    raw_client_context,
    request_on,
    route_policy,
    serve,
    sid,
)

from sidemesh import ConnectionInfo, ConnectionSetup
from sidemesh_mtls.identity import IdentityError, Material, build_identity
from sidemesh_mtls.policy import MtlsPolicy


def run(main: Callable[[], Awaitable[Any]], *policies: MtlsPolicy) -> Any:
    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            for policy in policies:
                await policy.close()

    return asyncio.run(wrapped())


def listener_setup(policy: MtlsPolicy) -> ConnectionSetup:
    setup = ConnectionSetup("listener", "inbound")
    policy.connection_setup(setup)
    assert setup.ssl_context is not None
    return setup


def upstream_setup(policy: MtlsPolicy) -> ConnectionSetup:
    setup = ConnectionSetup("upstream", "outbound")
    policy.connection_setup(setup)
    assert setup.ssl_context is not None and setup.verify_peer is not None
    return setup


@pytest.fixture
def inbound(pki: Pki) -> MtlsPolicy:
    """The reviews sidecar's inbound listener: only productpage may call."""
    files = pki.write(pki.issue("reviews"), "reviews")
    return listener_policy({"mode": "strict", "allow": [sid("productpage")], **files})


def client_for(pki: Pki, service: str) -> MtlsPolicy:
    """A caller's route policy towards ``reviews``, with the caller's identity."""
    files = pki.write(pki.issue(service), service)
    return route_policy({**files}, node={**NODE, "service": service})


def test_allowed_peer_gets_through_both_ways_verified(pki: Pki, inbound: MtlsPolicy) -> None:
    outbound = client_for(pki, "productpage")

    async def main() -> dict[str, Any]:
        setup = upstream_setup(outbound)
        async with serve(listener_setup(inbound).ssl_context, inbound) as (port, _):
            return await call(port, setup.ssl_context, setup.verify_peer)

    answer = run(main, inbound, outbound)
    assert answer["status"] == 200
    assert answer["peer"] == sid("productpage")


def test_peer_of_another_service_is_refused_by_allow(pki: Pki, inbound: MtlsPolicy) -> None:
    outbound = client_for(pki, "ratings")

    async def main() -> dict[str, Any]:
        setup = upstream_setup(outbound)
        async with serve(listener_setup(inbound).ssl_context, inbound) as (port, _):
            return await call(port, setup.ssl_context, setup.verify_peer)

    answer = run(main, inbound, outbound)
    assert answer["status"] == 403
    assert answer["body"]["identity"] == sid("ratings")
    assert answer["body"]["rule"] == {"plugin": "mtls", "allow": [sid("productpage")]}
    assert "matches no `allow` pattern" in answer["body"]["reason"]


#: case -> (certificate the client presents, how it is refused: by the TLS handshake
#: or by the SPIFFE checks with a 403 whose reason contains the text).
BAD_CLIENTS: dict[str, tuple[Callable[[Pki, Pki], Material], str]] = {
    "expired": (lambda pki, other: pki.craft([sid("productpage")], expired=True), "handshake"),
    "another-ca": (lambda pki, other: other.issue("productpage"), "handshake"),
    "two-uri-sans": (
        lambda pki, other: pki.craft([sid("productpage"), sid("admin")]),
        "exactly one URI SAN",
    ),
    "ca-cert-as-leaf": (
        lambda pki, other: pki.craft([sid("productpage")], ca=True),
        "is a CA certificate",
    ),
    "another-trust-domain": (
        lambda pki, other: pki.craft([sid("productpage", "evil.example")]),
        "outside trust domain cluster.local",
    ),
}


@pytest.mark.parametrize("case", BAD_CLIENTS)
def test_bad_client_certificates_are_refused(
    case: str, pki: Pki, inbound: MtlsPolicy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = Pki.create(tmp_path_factory.mktemp("other-ca"))
    make, expected = BAD_CLIENTS[case]
    # The client trusts the real bundle: only its own certificate is bad.
    context = raw_client_context(make(pki, other), trust=pki.ca.trust_bundle_pem())

    async def main() -> tuple[dict[str, Any], int]:
        async with serve(listener_setup(inbound).ssl_context, inbound) as (port, handled):
            answer = await call(port, context)
            return answer, len(handled)

    answer, handled = run(main, inbound)
    if expected == "handshake":
        assert "refused" in answer, answer
        assert handled == 0  # the server never got a usable connection
    else:
        assert answer["status"] == 403, answer
        assert expected in answer["body"]["reason"]
        assert answer["peer"] is None


def test_plaintext_and_missing_certificates_by_mode(pki: Pki) -> None:
    files = pki.write(pki.issue("reviews"), "reviews")
    strict = listener_policy({"mode": "strict", "allow": None, **files})
    permissive = listener_policy({"mode": "permissive", "allow": None, **files})
    assert listener_setup(strict).tls_optional is False
    assert listener_setup(permissive).tls_optional is True
    denied = strict.on_request(request_on(ConnectionInfo("c")))
    assert denied is not None and denied.status == 403
    assert b"mTLS is required" in denied.body
    plain = request_on(ConnectionInfo("c"))
    assert permissive.on_request(plain) is None and plain.peer_identity is None
    run(lambda: asyncio.sleep(0), strict, permissive)


def test_upstream_with_another_identity_fails_naming_it(pki: Pki) -> None:
    ratings = pki.issue("ratings")  # a server that is not reviews
    outbound = client_for(pki, "productpage")  # expects spiffe://.../sa/reviews

    async def main() -> dict[str, Any]:
        setup = upstream_setup(outbound)
        server_ctx = build_identity(ratings).server_context
        async with serve(server_ctx) as (port, _):
            return await call(port, setup.ssl_context, setup.verify_peer)

    answer = run(main, outbound)
    assert answer["refused"] == (
        f"mtls: expected upstream identity {sid('reviews')}, found {sid('ratings')}"
    )


def test_upstream_with_explicit_expect_and_foreign_ca(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = pki.write(pki.issue("productpage"), "productpage")
    outbound = route_policy({"expect": sid("ratings"), **files}, cluster="ratings-v2")
    other = Pki.create(tmp_path_factory.mktemp("other-ca"))

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        setup = upstream_setup(outbound)
        good = build_identity(pki.issue("ratings")).server_context
        foreign = build_identity(other.issue("ratings")).server_context
        async with serve(good) as (port, _):
            ok = await call(port, setup.ssl_context, setup.verify_peer)
        async with serve(foreign) as (port, _):
            bad = await call(port, setup.ssl_context, setup.verify_peer)
        return ok, bad

    ok, bad = run(main, outbound)
    assert ok["status"] == 200
    assert "CERTIFICATE_VERIFY_FAILED" in bad["refused"]


def test_unusable_files_are_a_clear_error(pki: Pki) -> None:
    files = pki.write(pki.issue("reviews"), "reviews")
    other = pki.write(pki.issue("ratings"), "ratings")
    with pytest.raises(IdentityError, match="private key does not match"):
        listener_policy({**files, "key_file": other["key_file"]})
    with pytest.raises(IdentityError, match="outside this sidecar's trust domain"):
        listener_policy(files, node={**NODE, "trust_domain": "other.example"})
    with pytest.raises(IdentityError, match="No such file"):
        listener_policy({**files, "cert_file": files["cert_file"] + ".missing"})
    crafted = pki.write(pki.craft([sid("a"), sid("b")]), "two")
    with pytest.raises(IdentityError, match="exactly one URI SAN"):
        listener_policy(crafted)


def test_rotation_while_clients_keep_connecting_drops_nothing(pki: Pki) -> None:
    server_files = pki.write(pki.issue("reviews"), "reviews")
    client_files = pki.write(pki.issue("productpage"), "productpage")
    inbound = listener_policy({"allow": [sid("productpage")], **server_files})
    outbound = route_policy({**client_files})
    for policy in (inbound, outbound):
        policy.manager.check_interval = 0.0  # look at the files on every connection

    async def main() -> tuple[list[dict[str, Any]], int]:
        results: list[dict[str, Any]] = []
        done, answered = asyncio.Event(), asyncio.Event()

        async def client() -> None:
            while not done.is_set():
                setup = upstream_setup(outbound)
                results.append(await call(port, setup.ssl_context, setup.verify_peer))
                answered.set()

        async def settle() -> None:
            # Three more answers: one connection, at least, began after the last write
            # (each client has one in flight), however slow the machine. The sleep gives
            # the next files a new mtime, whatever the clock's tick.
            await asyncio.sleep(0.1)
            for _ in range(3):
                answered.clear()
                await answered.wait()

        async def rotate() -> None:
            for _ in range(4):
                await settle()
                pki.write(pki.issue("reviews"), "reviews")
                pki.write(pki.issue("productpage"), "productpage")
            await settle()
            done.set()

        async with serve(listener_setup(inbound).ssl_context, inbound) as (port, _):
            async with asyncio.timeout(30):
                await asyncio.gather(client(), client(), rotate())
        return results, inbound.manager.rotations

    results, rotations = run(main, inbound, outbound)
    failures = [r for r in results if r.get("status") != 200]
    assert failures == []
    assert rotations >= 4
    assert len({r["server_serial"] for r in results}) >= 4
    assert outbound.manager.rotations >= 4
