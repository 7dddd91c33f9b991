"""A real PKI (the control plane's CertificateAuthority) and a tiny TLS server/client
for the mtls tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from sidemesh import ConnectionInfo, ControlPlane, Headers, Request, testing
from sidemesh_mtls.identity import Material
from sidemesh_mtls.policy import MtlsPolicy

TD = "cluster.local"
NODE = {"service": "reviews", "namespace": "default", "trust_domain": TD}
IO_TIMEOUT = 5.0


def sid(service: str, td: str = TD) -> str:
    return f"spiffe://{td}/ns/default/sa/{service}"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    """One trust domain's CA, kept in a temporary data directory."""

    ca: testing.control.CertificateAuthority
    ca_key: ec.EllipticCurvePrivateKey
    root: Path

    @classmethod
    def create(cls, root: Path, trust_domain: str = TD) -> Pki:
        ca = testing.control.CertificateAuthority.open(root / "ca", trust_domain)
        key = serialization.load_pem_private_key(
            (root / "ca" / testing.control.CA_KEY_FILE).read_bytes(), None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(ca, key, root)

    def issue(self, service: str, ttl: float = 3600) -> Material:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        chain = self.ca.sign_csr(csr, namespace="default", service=service, ttl=ttl)
        return Material(chain, _pem_key(key), self.ca.trust_bundle_pem(), source=service)

    def craft(
        self,
        uris: list[str],
        *,
        ca: bool = False,
        expired: bool = False,
    ) -> Material:
        """A certificate signed by this CA's key with properties the CA never issues."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
            if expired
            else (now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1))
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        return Material(
            cert.public_bytes(serialization.Encoding.PEM),
            _pem_key(key),
            self.ca.trust_bundle_pem(),
            source="crafted",
        )

    def write(self, material: Material, name: str) -> dict[str, str]:
        """Write ``material`` as files (each replaced atomically) and return the
        ``cert_file``/``key_file``/``bundle_file`` config keys."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        keys = {}
        for key, data in (
            ("cert_file", material.chain_pem),
            ("key_file", material.key_pem),
            ("bundle_file", material.bundle_pem),
        ):
            path = folder / f"{key}.pem"
            tmp = folder / f".{key}.tmp"
            tmp.write_bytes(data)
            tmp.replace(path)
            keys[key] = str(path)
        return keys


def raw_client_context(material: Material, trust: bytes | None = None) -> ssl.SSLContext:
    """A client context for any material, valid or not (the plugin refuses to build
    one from a bad certificate, but an attacker's client would not)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=(trust or material.bundle_pem).decode())
    with tempfile.NamedTemporaryFile(suffix=".pem") as fh:
        fh.write(material.chain_pem + material.key_pem)
        fh.flush()
        ctx.load_cert_chain(fh.name)
    return ctx


def control(url: str, token: str = "tok-reviews") -> ControlPlane:
    """The control plane at ``url``, as the sidecar gives it to its policies."""
    return ControlPlane(url, lambda: token)


def listener_policy(
    config: dict[str, Any],
    node: dict[str, Any] | None = None,
    control: ControlPlane | None = None,
) -> MtlsPolicy:
    context = testing.policy_context(
        "mtls",
        listener="inbound",
        route="local",
        scope="listener",
        node=node or NODE,
        control=control,
    )
    return MtlsPolicy(config, context)


def route_policy(
    config: dict[str, Any],
    cluster: str = "reviews",
    node: dict[str, Any] | None = None,
    control: ControlPlane | None = None,
) -> MtlsPolicy:
    context = testing.policy_context(
        "mtls",
        listener="outbound",
        route=cluster,
        cluster=testing.make_cluster(cluster),
        node=node or {**NODE, "service": "productpage"},
        control=control,
    )
    return MtlsPolicy(config, context)


def outbound_config(
    service: str, target: str, files: dict[str, str], **mtls: Any
) -> dict[str, Any]:
    return {
        "node": {"service": service, "namespace": "default", "trust_domain": "cluster.local"},
        "clusters": [{"name": "reviews", "endpoints": [{"address": target}]}],
        "listeners": [
            {
                "name": "outbound",
                "address": "127.0.0.1:0",
                "routes": [
                    {
                        "name": "reviews",
                        "match": {"prefix": "/"},
                        "cluster": "reviews",
                        "plugins": [{"name": "mtls", "config": {**mtls, **files}}],
                    }
                ],
            }
        ],
    }


def request_on(info: ConnectionInfo) -> Request:
    return Request("GET", "/", "reviews", Headers(), info, listener="inbound")


@asynccontextmanager
async def serve(
    context: ssl.SSLContext, policy: MtlsPolicy | None = None
) -> AsyncIterator[tuple[int, list[ssl.SSLObject]]]:
    """A TLS server answering one JSON line per connection: the policy's verdict."""
    handled: list[ssl.SSLObject] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            handled.append(ssl_object)
            await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
            info = ConnectionInfo(
                "client", tls=True, peer_certificate=ssl_object.getpeercert(binary_form=True)
            )
            request = request_on(info)
            answer: dict[str, Any] = {"status": 200}
            if policy is not None:
                response = policy.on_request(request)
                if response is not None:
                    answer = {"status": response.status, "body": json.loads(response.body)}
            answer["peer"] = request.peer_identity
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], handled
    finally:
        server.close()
        await server.wait_closed()


async def call(
    port: int,
    context: ssl.SSLContext,
    verify_peer: Callable[[bytes], str | None] | None = None,
) -> dict[str, Any]:
    """One connection: ``{"status": ..., "peer": ...}``, or ``{"refused": reason}``
    when the handshake, the peer check or the exchange failed."""
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=""
            )
            try:
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                server_serial = x509.load_der_x509_certificate(der).serial_number
                if verify_peer is not None:
                    problem = verify_peer(der)
                    if problem is not None:
                        return {"refused": problem}
                writer.write(b"hello\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, ssl.SSLError) as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
    if not line:
        return {"refused": "connection closed by the server"}
    answer: dict[str, Any] = json.loads(line)
    answer["server_serial"] = server_serial
    return answer
