"""The control plane's certificate authority: a root kept under ``--data`` that signs
short-lived X.509-SVIDs for sidecars.

The identity in an issued certificate is decided here, from the caller's authenticated
service (the control API knows it from the sidecar's token), never from the CSR: only
the CSR's public key is used, and a CSR whose own SANs claim another identity is refused.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidemesh.api.spiffe import SpiffeIdError, validate_trust_domain, workload_id
from sidemesh.control.files import PRIVATE_FILE, private_dir, private_file

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_TTL",
    "MAX_TTL",
    "CertificateAuthority",
    "CertificateAuthorityError",
    "CertificateRequestError",
]

CA_KEY_FILE = "ca-key.pem"
CA_CERT_FILE = "ca-cert.pem"
#: Istio's default workload certificate lifetime.
DEFAULT_TTL = 24 * 3600.0
MAX_TTL = 30 * 24 * 3600.0
#: notBefore is backdated by this much so a peer whose clock is a little behind does
#: not reject a certificate issued "in its future".
CLOCK_SKEW = dt.timedelta(minutes=5)
ROOT_LIFETIME = dt.timedelta(days=3650)


class CertificateAuthorityError(RuntimeError):
    """The CA's files cannot be created or used (permissions, wrong trust domain)."""


class CertificateRequestError(ValueError):
    """A CSR or an issuance request that is refused; the message says why."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes, mode: int) -> None:
    # Written under a temporary name (created with the final mode, never world-readable
    # even briefly) and renamed, so a crash cannot leave a half-written key behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CertificateAuthority:
    """A SPIFFE certificate authority for one trust domain.

    Use :meth:`open`; it creates the root (EC P-256 key, self-signed CA certificate with
    the SPIFFE ID ``spiffe://<trust_domain>``) on first start and reuses it afterwards.
    """

    def __init__(
        self,
        trust_domain: str,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
    ) -> None:
        self.trust_domain = trust_domain
        self._key = key
        self.certificate = certificate
        self._bundle_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    # ---------------------------------------------------------------- creation / reuse

    @classmethod
    def open(cls, data_dir: Path, trust_domain: str) -> CertificateAuthority:
        """Load the CA kept in ``data_dir`` (made 0700, its files 0600), creating it on
        first start.

        :raises CertificateAuthorityError: when the key file is readable by others, the
            files are unreadable, or they belong to another trust domain.
        :raises sidemesh.api.spiffe.SpiffeIdError: for an invalid trust domain name.
        """
        validate_trust_domain(trust_domain)
        data_dir = private_dir(Path(data_dir))
        key_path = data_dir / CA_KEY_FILE
        cert_path = data_dir / CA_CERT_FILE
        if key_path.exists():
            mode = stat.S_IMODE(key_path.stat().st_mode)
            if mode & 0o077:
                raise CertificateAuthorityError(
                    f"{key_path} is accessible by other users (mode {mode:04o}); run "
                    f"`chmod 600 {key_path}`")
            key = cls._parse_key(key_path.read_bytes(), str(key_path))
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            _write_private(key_path, _key_pem(key), PRIVATE_FILE)
        if cert_path.exists():
            private_file(cert_path)
            cert = cls._check_cert(cert_path.read_bytes(), key, trust_domain, str(cert_path))
        else:
            cert = cls._self_sign(key, trust_domain)
            # Not a secret, but a state file like any other: private too.
            _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM),
                           PRIVATE_FILE)
        return cls(trust_domain, key, cert)

    @classmethod
    def new_root(cls, trust_domain: str) -> tuple[bytes, bytes]:
        """A new root for ``trust_domain``: (key, certificate) in PEM, for a store that
        keeps them itself (:meth:`from_pem` loads them)."""
        validate_trust_domain(trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = cls._self_sign(key, trust_domain)
        return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, trust_domain: str, key_pem: bytes, cert_pem: bytes, origin: str
                 ) -> CertificateAuthority:
        """The CA of ``trust_domain`` from its key and certificate (``origin`` names where
        they were kept, for errors).

        :raises CertificateAuthorityError: as :meth:`open` does.
        """
        validate_trust_domain(trust_domain)
        key = cls._parse_key(key_pem, origin)
        return cls(trust_domain, key, cls._check_cert(cert_pem, key, trust_domain, origin))

    @staticmethod
    def _parse_key(pem: bytes, origin: str) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateAuthorityError(f"{origin}: not a PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateAuthorityError(f"{origin}: the CA key must be an EC key")
        return key

    @staticmethod
    def _check_cert(
        pem: bytes, key: ec.EllipticCurvePrivateKey, trust_domain: str, origin: str
    ) -> x509.Certificate:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise CertificateAuthorityError(f"{origin}: not a PEM certificate: {exc}") from None
        if cert.public_key() != key.public_key():
            raise CertificateAuthorityError(f"{origin} does not match the key beside it")
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        expected = f"spiffe://{trust_domain}"
        if uris != [expected]:
            raise CertificateAuthorityError(
                f"{origin} is the CA of {', '.join(uris) or 'another trust domain'}, "
                f"not of {expected}; use another data directory"
            )
        if cert.not_valid_after_utc <= _now():
            raise CertificateAuthorityError(
                f"{origin} expired on {cert.not_valid_after_utc.isoformat()}"
            )
        return cert

    @staticmethod
    def _self_sign(key: ec.EllipticCurvePrivateKey, trust_domain: str) -> x509.Certificate:
        now = _now()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidemesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"sidemesh CA {trust_domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )

    # ---------------------------------------------------------------- issuing

    def sign_server(
        self, public_key: ec.EllipticCurvePublicKey, sans: list[x509.GeneralName],
        lifetime: dt.timedelta,
    ) -> bytes:
        """A TLS server certificate (PEM) for ``sans``, signed by this CA: the control
        API's own HTTPS certificate (control/tls.py), trusted through this CA's bundle."""
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidemesh control")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


    def trust_bundle_pem(self) -> bytes:
        """The trust bundle (the CA certificate) in PEM."""
        return self._bundle_pem

    def certificate_response(
        self,
        csr_pem: bytes,
        *,
        namespace: str,
        service: str,
        ttl: float = DEFAULT_TTL,
    ) -> dict[str, str]:
        """The JSON body of ``POST /v1/certificates`` as the mtls plugin expects it:
        ``{"certificate": PEM chain, "trust_bundle": PEM, "expires_at": ISO 8601}``.

        Same arguments and errors as :meth:`sign_csr`.
        """
        pem = self.sign_csr(csr_pem, namespace=namespace, service=service, ttl=ttl)
        not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        return {
            "certificate": pem.decode("ascii"),
            "trust_bundle": self._bundle_pem.decode("ascii"),
            "expires_at": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        namespace: str,
        service: str,
        ttl: float = DEFAULT_TTL,
    ) -> bytes:
        """Issue a leaf X.509-SVID for ``spiffe://<td>/ns/<namespace>/sa/<service>``.

        :param csr_pem: a PEM PKCS#10 request; only its public key is used (EC P-256/
            P-384/P-521 or RSA >= 2048 bits). Its signature must verify, and any SAN it
            requests must be exactly the identity being issued.
        :param namespace: the caller's namespace (from its authenticated token).
        :param service: the caller's service (from its authenticated token).
        :param ttl: lifetime in seconds (default 24h, at most 30 days, never past the
            root's own expiry).
        :returns: the leaf certificate in PEM (the root is the trust bundle, so the
            chain is the leaf alone).
        :raises CertificateRequestError: naming what is wrong with the request.
        """
        try:
            spiffe_id = workload_id(self.trust_domain, namespace, service)
        except SpiffeIdError as exc:
            raise CertificateRequestError(f"cannot issue an identity: {exc}") from None
        if not 0 < ttl <= MAX_TTL:
            raise CertificateRequestError(
                f"ttl must be between 0 and {MAX_TTL:.0f} seconds, not {ttl}"
            )
        csr = self._load_csr(csr_pem, spiffe_id)
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
                raise CertificateRequestError(
                    f"unsupported EC curve {public_key.curve.name}; use P-256"
                )
            rsa_key = False
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise CertificateRequestError(
                    f"RSA key of {public_key.key_size} bits is too small; use >= 2048"
                )
            rsa_key = True
        else:
            raise CertificateRequestError(
                f"unsupported key type {type(public_key).__name__}; use EC P-256 or RSA"
            )

        now = _now()
        not_after = min(now + dt.timedelta(seconds=ttl), self.certificate.not_valid_after_utc)
        not_before = max(now - CLOCK_SKEW, self.certificate.not_valid_before_utc)
        cert = (
            x509.CertificateBuilder()
            # An empty subject is what Istio issues; X509-SVID §3.1 then requires the
            # SAN extension to be critical.
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=rsa_key,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski.value),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _load_csr(csr_pem: bytes, spiffe_id: str) -> x509.CertificateSigningRequest:
        if isinstance(csr_pem, str):
            csr_pem = csr_pem.encode()
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CertificateRequestError(f"not a PEM certificate request: {exc}") from None
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise CertificateRequestError("the certificate request's signature does not verify")
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return csr
        claimed = [str(getattr(name, "value", name)) for name in sans]
        if claimed != [spiffe_id]:
            raise CertificateRequestError(
                f"the certificate request asks for {', '.join(claimed)}, but the caller "
                f"is {spiffe_id}; leave SANs out or request exactly that identity"
            )
        return csr
