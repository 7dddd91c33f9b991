"""A workload identity (certificate chain, key, trust bundle) and the TLS contexts made
from it.

An :class:`Identity` is immutable: rotation builds a new one and swaps it in, so a
connection uses one consistent (certificate, key, bundle) triple from start to end.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidemesh import SvidError, parse_spiffe_id, spiffe_id_from_cert

__all__ = [
    "Identity",
    "IdentityError",
    "IdentityUnavailable",
    "Material",
    "build_identity",
]

#: Istio's default minimum for mesh traffic.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class IdentityError(ValueError):
    """Certificates that cannot be used as this sidecar's identity; says why."""


class IdentityUnavailable(ConnectionError):
    """No workload certificate yet (the control plane has not answered)."""


@dataclass(frozen=True)
class Material:
    """PEM bytes as they come from files or from the control plane."""

    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    source: str


@dataclass(frozen=True)
class Identity:
    """A usable identity: the sidecar's SPIFFE ID and ready-made TLS contexts."""

    spiffe_id: str
    trust_domain: str
    not_after: dt.datetime
    serial: int
    source: str
    #: listener side: requires and verifies a client certificate against the bundle.
    server_context: ssl.SSLContext
    #: route side: presents our certificate, verifies the server against the bundle.
    client_context: ssl.SSLContext
    #: the same, offering HTTP/2 by ALPN: ``("h2",)`` and ``("h2", "http/1.1")``.
    alpn_client_contexts: dict[tuple[str, ...], ssl.SSLContext]

    def client_context_for(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """The client context offering ``alpn`` (the core's
        ``ConnectionSetup.alpn_protocols`` for the cluster's protocol)."""
        return self.alpn_client_contexts.get(alpn, self.client_context)


#: what a listener offers by ALPN: sidemesh listeners serve HTTP/2 and HTTP/1.1.
SERVER_ALPN = ("h2", "http/1.1")
#: what a connection to a cluster offers: ``protocol: http2``, ``protocol: auto``.
CLIENT_ALPN: tuple[tuple[str, ...], ...] = (("h2",), ("h2", "http/1.1"))


def _load_chain(context: ssl.SSLContext, material: Material) -> None:
    # SSLContext only loads certificates and keys from files; the key goes to a private
    # temporary file (mode 0600 from mkstemp) that exists only for this call.
    fd, path = tempfile.mkstemp(prefix="sidemesh-mtls-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(material.chain_pem.rstrip(b"\n") + b"\n" + material.key_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _context(purpose: int, material: Material) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = MIN_TLS_VERSION
    # SPIFFE authenticates the URI SAN, checked after the handshake; DNS names and
    # CNs mean nothing here (CHECKLIST D4).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.bundle_pem.decode("ascii"))
    _load_chain(context, material)
    return context


def build_identity(material: Material, trust_domain: str | None = None) -> Identity:
    """Validate ``material`` and build its TLS contexts.

    :param trust_domain: when given, the certificate's SPIFFE ID must belong to it.
    :raises IdentityError: naming what is wrong (unparsable PEM, key not matching the
        certificate, not a leaf SVID, wrong trust domain, expired, empty bundle).
    """
    where = material.source
    try:
        chain = x509.load_pem_x509_certificates(material.chain_pem)
    except ValueError as exc:
        raise IdentityError(f"{where}: the certificate is not PEM: {exc}") from None
    try:
        bundle = x509.load_pem_x509_certificates(material.bundle_pem)
    except ValueError as exc:
        raise IdentityError(f"{where}: the trust bundle is not PEM: {exc}") from None
    if not bundle:
        raise IdentityError(f"{where}: the trust bundle holds no certificate")
    try:
        key = serialization.load_pem_private_key(material.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"{where}: the private key is not an unencrypted PEM key: {exc}"
        ) from None
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise IdentityError(f"{where}: the private key does not match the certificate")
    try:
        spiffe_id = spiffe_id_from_cert(leaf.public_bytes(serialization.Encoding.DER))
    except SvidError as exc:
        raise IdentityError(f"{where}: not a workload X.509-SVID: {exc}") from None
    own_domain = parse_spiffe_id(spiffe_id).trust_domain
    if trust_domain is not None and own_domain != trust_domain:
        raise IdentityError(
            f"{where}: the certificate is {spiffe_id}, outside this sidecar's trust domain "
            f"{trust_domain!r} (node.trust_domain)"
        )
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise IdentityError(
            f"{where}: the certificate expired on {leaf.not_valid_after_utc.isoformat()}"
        )
    try:
        server = _context(ssl.PROTOCOL_TLS_SERVER, material)
        server.set_alpn_protocols(list(SERVER_ALPN))
        client = _context(ssl.PROTOCOL_TLS_CLIENT, material)
        alpn_clients: dict[tuple[str, ...], ssl.SSLContext] = {}
        for alpn in CLIENT_ALPN:
            alpn_clients[alpn] = _context(ssl.PROTOCOL_TLS_CLIENT, material)
            alpn_clients[alpn].set_alpn_protocols(list(alpn))
    except ssl.SSLError as exc:
        raise IdentityError(f"{where}: TLS cannot use these certificates: {exc}") from None
    return Identity(
        spiffe_id=spiffe_id,
        trust_domain=own_domain,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        source=where,
        server_context=server,
        client_context=client,
        alpn_client_contexts=alpn_clients,
    )
