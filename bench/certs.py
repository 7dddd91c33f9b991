"""Certificates for the mTLS scenarios: a throwaway CA and one X.509-SVID per service.

Issued by sidemesh's own :class:`~sidemesh.control.ca.CertificateAuthority`, so the
benchmark measures the certificates the control plane would hand out, not ones made
to suit the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh.control.ca import CertificateAuthority

__all__ = ["BENCH_SERVICES", "BUNDLE_FILE", "issue_certificates"]

#: the services a ``{certs}`` directory holds an identity for: ``<name>.crt``/``<name>.key``.
BENCH_SERVICES = ("a", "b")
BUNDLE_FILE = "bundle.pem"


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    # The CA takes the identity from its caller, not from the CSR: the subject is empty.
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue_certificates(
    directory: Path,
    trust_domain: str = "cluster.local",
    namespace: str = "default",
    services: tuple[str, ...] = BENCH_SERVICES,
) -> Path:
    """Create a CA under ``directory/ca`` and write ``<service>.crt``/``.key`` for each
    service plus ``bundle.pem`` (the CA certificate) into ``directory``.

    The identities are ``spiffe://<trust_domain>/ns/<namespace>/sa/<service>``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.open(directory / "ca", trust_domain)
    (directory / BUNDLE_FILE).write_bytes(ca.trust_bundle_pem())
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = ca.sign_csr(_csr(key), namespace=namespace, service=service)
        (directory / f"{service}.crt").write_bytes(certificate)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created 0600: the key is never readable by others, not even for a moment.
        fd = os.open(directory / f"{service}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    return directory
