"""SPIFFE certificates from a test CA, written where the mtls plugin reads them."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh.control.ca import CertificateAuthority

__all__ = ["svid_files"]


def svid_files(
    ca: CertificateAuthority, directory: Path, service: str, namespace: str = "default"
) -> dict[str, str]:
    """``service``'s certificate (``spiffe://<td>/ns/<namespace>/sa/<service>``) and key
    from ``ca``, with the CA's trust bundle, written to ``directory``: the mtls plugin's
    ``cert_file``, ``key_file`` and ``bundle_file`` (curl's ``--cert``, ``--key`` and
    ``--cacert`` too)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    files = {
        "cert_file": directory / f"{service}.crt",
        "key_file": directory / f"{service}.key",
        "bundle_file": directory / "bundle.pem",
    }
    files["cert_file"].write_bytes(ca.sign_csr(pem, namespace=namespace, service=service))
    files["key_file"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["bundle_file"].write_bytes(ca.trust_bundle_pem())
    return {name: str(path) for name, path in files.items()}
