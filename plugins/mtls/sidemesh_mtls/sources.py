"""Where a sidecar's certificates come from: files, or the control plane's CA.

The control-plane contract (implemented by ``sidemesh control``)::

    POST {control_url}/v1/certificates
    Authorization: Bearer <sidecar token>
    Content-Type: application/json

    {"csr": "<PEM PKCS#10 request>"}

    200 {"certificate": "<PEM chain, leaf first>",
         "trust_bundle": "<PEM CA certificate(s)>",
         "expires_at": "<ISO 8601 notAfter of the leaf>"}
    4xx/5xx {"error": "<message>"}

The identity in the certificate is the one bound to the token, never one the CSR asks
for. The private key is generated here and never leaves the process.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .identity import IdentityError, Material

__all__ = [
    "CERTIFICATES_PATH",
    "CAIdentitySource",
    "FileIdentitySource",
    "FileStamp",
]

CERTIFICATES_PATH = "/v1/certificates"
FileStamp = tuple[tuple[int, int], ...]


class FileIdentitySource:
    """Certificate chain, key and bundle from three PEM files (your own PKI, or files
    written by an agent such as cert-manager's csi-driver or spiffe-helper)."""

    def __init__(self, cert_file: str | Path, key_file: str | Path, bundle_file: str | Path):
        self.paths = (Path(cert_file), Path(key_file), Path(bundle_file))

    @property
    def description(self) -> str:
        return "files " + ", ".join(str(p) for p in self.paths)

    def stamp(self) -> FileStamp | None:
        """(mtime, size) of the three files, or ``None`` when one cannot be read."""
        try:
            stats = [p.stat() for p in self.paths]
        except OSError:
            return None
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def load(self) -> Material:
        """Read the files.

        :raises IdentityError: when a file cannot be read.
        """
        contents = []
        for label, path in zip(("cert_file", "key_file", "bundle_file"), self.paths, strict=True):
            try:
                contents.append(path.read_bytes())
            except OSError as exc:
                raise IdentityError(f"mtls {label} {path}: {exc.strerror or exc}") from None
        cert, key, bundle = contents
        return Material(cert, key, bundle, source=self.description)


class CAIdentitySource:
    """Certificates signed by the control plane's CA from a locally generated key."""

    def __init__(
        self,
        control_url: str,
        token: Callable[[], str],
        *,
        service: str,
        namespace: str,
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = control_url.rstrip("/") + CERTIFICATES_PATH
        #: how the control plane's HTTPS certificate is checked (its CA, from the core).
        self.verify = verify
        # Read anew for each request: the sidecar's token file may have been rotated.
        self._token = token
        self.service = service
        self.namespace = namespace
        self.timeout = timeout

    @property
    def description(self) -> str:
        return f"control plane {self.url}"

    def _csr(self) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        # The CA ignores the subject; it only helps a human reading the request.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.service)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return csr.public_bytes(serialization.Encoding.PEM), key_pem

    async def fetch(self) -> Material:
        """Generate a key, have the CA sign it, return the result.

        :raises IdentityError: when the control plane refuses or answers nonsense.
        :raises httpx.HTTPError: when it cannot be reached.
        """
        try:
            token = self._token()
        except ValueError as exc:  # no token file, or an empty one
            raise IdentityError(f"cannot ask {self.url} for a certificate: {exc}") from None
        csr_pem, key_pem = self._csr()
        async with httpx.AsyncClient(timeout=self.timeout, verify=self.verify) as client:
            response = await client.post(
                self.url,
                json={"csr": csr_pem.decode("ascii")},
                headers={"authorization": f"Bearer {token}"},
            )
        payload = _json(response)
        if response.status_code != 200:
            detail = payload.get("error") if isinstance(payload, dict) else None
            raise IdentityError(
                f"{self.url} refused the certificate request: {response.status_code} "
                f"{detail or response.text[:200]}"
            )
        if not isinstance(payload, dict) or not all(
            isinstance(payload.get(k), str) for k in ("certificate", "trust_bundle")
        ):
            raise IdentityError(
                f"{self.url} answered without 'certificate' and 'trust_bundle' strings"
            )
        return Material(
            payload["certificate"].encode("ascii"),
            key_pem,
            payload["trust_bundle"].encode("ascii"),
            source=self.description,
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
