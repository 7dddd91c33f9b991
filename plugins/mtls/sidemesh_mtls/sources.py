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
for. The private key is generated here and never leaves the process. A control plane of
several replicas is asked at the one in use; one that does not answer (a connection
error, a timeout, a ``5xx``) hands the request to the next, as the sidecar's own
connection to the control plane moves with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidemesh import ControlPlane

from .identity import IdentityError, Material

if TYPE_CHECKING:
    # httpx (~6 MB of RSS) loads with the first certificate request: certificates from
    # files never need it.
    import httpx

log = logging.getLogger("sidemesh.mtls")

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
    """Certificates signed by the control plane's CA from a locally generated key.

    :param control: the control plane the sidecar runs under (its replicas, the one in
        use, its token and the CA bundle its certificate must chain to).
    """

    def __init__(
        self,
        control: ControlPlane,
        *,
        service: str,
        namespace: str,
        timeout: float = 10.0,
    ) -> None:
        self.control = control
        #: how the control plane's HTTPS certificate is checked (its CA, from the core).
        self.verify = control.verify()
        self.service = service
        self.namespace = namespace
        self.timeout = timeout

    @property
    def url(self) -> str:
        """Where the next request goes (on the replica in use)."""
        return self.control.url + CERTIFICATES_PATH

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
        :raises httpx.HTTPError: when no replica can be reached.
        """
        try:
            # Read anew for each request: the sidecar's token file may have been rotated.
            token = self.control.token()
        except ValueError as exc:  # no token file, or an empty one
            raise IdentityError(f"cannot ask {self.url} for a certificate: {exc}") from None
        import httpx

        csr_pem, key_pem = self._csr()
        async with httpx.AsyncClient(timeout=self.timeout, verify=self.verify) as client:
            response = await self._post(client, {"csr": csr_pem.decode("ascii")}, token)
        url = str(response.request.url)
        payload = _json(response)
        if response.status_code != 200:
            detail = payload.get("error") if isinstance(payload, dict) else None
            raise IdentityError(
                f"{url} refused the certificate request: {response.status_code} "
                f"{detail or response.text[:200]}"
            )
        if not isinstance(payload, dict) or not all(
            isinstance(payload.get(k), str) for k in ("certificate", "trust_bundle")
        ):
            raise IdentityError(f"{url} answered without 'certificate' and 'trust_bundle' strings")
        return Material(
            payload["certificate"].encode("ascii"),
            key_pem,
            payload["trust_bundle"].encode("ascii"),
            source=f"control plane {url}",
        )

    async def _post(
        self, client: httpx.AsyncClient, body: dict[str, str], token: str
    ) -> httpx.Response:
        """The answer of the replica in use, or of the next ones while it does not answer
        (each asked once: the caller retries with back-off)."""
        import httpx

        headers = {"authorization": f"Bearer {token}"}
        base = self.control.url
        for _ in range(len(self.control.urls) - 1):
            try:
                response = await client.post(base + CERTIFICATES_PATH, json=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            else:
                if response.status_code < 500:
                    return response
                reason = f"HTTP {response.status_code}"
            following = self.control.fail_over(base)
            log.warning("mtls: control plane %s unreachable (%s): trying %s", base, reason,
                        following)
            base = following
        # The last replica of the round: its answer or its error, as they are.
        return await client.post(base + CERTIFICATES_PATH, json=body, headers=headers)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
