"""SPIFFE IDs and X.509-SVIDs: parsing, leaf validation and ``allow``-list globs.

The rules are those of the SPIFFE standards (``SPIFFE-ID.md`` §2 and ``X509-SVID.md``
§2-§5). Parsing is strict, like go-spiffe: a trust domain must already be lower-case
(we never normalise an identity that authorisation decisions depend on).

Globs (:func:`glob_match`) follow Istio's ``principals``: ``*`` matches any run of
characters *including* ``/`` (so ``spiffe://cluster.local/ns/default/*`` matches every
service account of the namespace, and ``*`` alone matches any identity); every other
character is literal. There is no ``?`` or ``[...]``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "MAX_ID_LENGTH",
    "SpiffeId",
    "SpiffeIdError",
    "SvidError",
    "compile_globs",
    "glob_match",
    "parse_spiffe_id",
    "spiffe_id_from_cert",
    "validate_trust_domain",
    "workload_id",
]

#: SPIFFE-ID.md §2.3: implementations must accept IDs up to 2048 bytes and should not
#: generate longer ones; we refuse longer ones outright.
MAX_ID_LENGTH = 2048
#: RFC 3986 caps a host at 255 characters, so a trust domain too.
MAX_TRUST_DOMAIN_LENGTH = 255

_SCHEME = "spiffe://"
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[a-zA-Z0-9._-]+")


class SpiffeIdError(ValueError):
    """A string that is not a valid SPIFFE ID; the message says which rule it breaks."""


class SvidError(ValueError):
    """A certificate that is not a valid leaf X.509-SVID; the message says why."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID. ``path`` is ``""`` for the trust domain's own ID, otherwise
    it starts with ``/``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> list[str]:
        return self.path.split("/")[1:] if self.path else []


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else raise
    :class:`SpiffeIdError`."""
    if not trust_domain:
        raise SpiffeIdError("trust domain is empty")
    if trust_domain in (".", ".."):
        # Not names, and a trust domain also names the control plane's CA directory.
        raise SpiffeIdError(f"trust domain {trust_domain!r} is a relative path, not a name")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError(
            f"trust domain is {len(trust_domain)} characters long; the limit is "
            f"{MAX_TRUST_DOMAIN_LENGTH}"
        )
    if "%" in trust_domain:
        raise SpiffeIdError(f"trust domain {trust_domain!r} is percent-encoded")
    if "@" in trust_domain:
        raise SpiffeIdError(f"trust domain {trust_domain!r} has userinfo (user@)")
    if ":" in trust_domain and not trust_domain.startswith("["):
        raise SpiffeIdError(f"trust domain {trust_domain!r} has a port")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} may contain only lower-case letters, digits, "
            "'.', '-' and '_'"
        )
    return trust_domain


def _validate_segment(segment: str, where: str) -> None:
    if segment == "":
        raise SpiffeIdError(f"{where}: empty path segment (// or trailing /)")
    if segment in (".", ".."):
        raise SpiffeIdError(f"{where}: relative path segment {segment!r}")
    if "%" in segment:
        raise SpiffeIdError(f"{where}: percent-encoded path segment {segment!r}")
    if not _SEGMENT_RE.fullmatch(segment):
        raise SpiffeIdError(
            f"{where}: path segment {segment!r} may contain only letters, digits, '.', '-' and '_'"
        )


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse and validate a SPIFFE ID (``spiffe://<trust domain>[/<path>]``).

    :raises SpiffeIdError: naming the rule broken (scheme, trust domain charset,
        userinfo, port, query, fragment, path segments, length).
    """
    if not isinstance(value, str):
        raise SpiffeIdError(f"a SPIFFE ID must be a string, not {type(value).__name__}")
    if not value:
        raise SpiffeIdError("SPIFFE ID is empty")
    if len(value.encode()) > MAX_ID_LENGTH:
        raise SpiffeIdError(
            f"SPIFFE ID is {len(value.encode())} bytes long; the limit is {MAX_ID_LENGTH}"
        )
    if not value.startswith(_SCHEME):
        scheme = value.split(":", 1)[0] if ":" in value else ""
        if scheme.lower() == "spiffe":
            raise SpiffeIdError(f"{value!r}: the scheme must be lower-case 'spiffe'")
        raise SpiffeIdError(f"{value!r}: the scheme must be 'spiffe://'")
    rest = value[len(_SCHEME) :]
    if "?" in rest:
        raise SpiffeIdError(f"{value!r}: a SPIFFE ID must not have a query")
    if "#" in rest:
        raise SpiffeIdError(f"{value!r}: a SPIFFE ID must not have a fragment")
    trust_domain, slash, path = rest.partition("/")
    try:
        validate_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        raise SpiffeIdError(f"{value!r}: {exc}") from None
    if not slash:
        return SpiffeId(trust_domain, "")
    for segment in path.split("/"):
        _validate_segment(segment, repr(value))
    return SpiffeId(trust_domain, "/" + path)


def workload_id(trust_domain: str, namespace: str, service: str) -> str:
    """The Istio-style identity ``spiffe://<td>/ns/<namespace>/sa/<service>``, validated.

    :raises SpiffeIdError: when any part would make an invalid ID.
    """
    validate_trust_domain(trust_domain)
    for label, part in (("namespace", namespace), ("service", service)):
        _validate_segment(part, label)
    return str(parse_spiffe_id(f"{_SCHEME}{trust_domain}/ns/{namespace}/sa/{service}"))


def spiffe_id_from_cert(der: bytes) -> str:
    """The SPIFFE ID of a *leaf* X.509-SVID, after the leaf checks of X509-SVID §5.2.

    Path validation (signatures, expiry, chain to the bundle) is the TLS stack's job and
    is not repeated here; this checks what it does not: exactly one URI SAN that is a
    valid SPIFFE ID with a non-root path, not a CA, ``keyUsage`` critical with
    ``digitalSignature`` and without ``keyCertSign``/``cRLSign``, and, when present,
    ``extKeyUsage`` with both ``serverAuth`` and ``clientAuth``.

    :raises SvidError: naming what is wrong with the certificate.
    """
    # cryptography adds ~8 MB to every proxy process; only one that does mTLS needs it.
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SvidError(f"not a DER X.509 certificate: {exc}") from None
    exts = cert.extensions

    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise SvidError("the certificate is a CA certificate (cA=true), not a workload SVID")

    try:
        ku_ext = exts.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise SvidError("the certificate has no keyUsage extension") from None
    if not ku_ext.critical:
        raise SvidError("the certificate's keyUsage extension is not critical")
    ku = ku_ext.value
    if not ku.digital_signature:
        raise SvidError("the certificate's keyUsage lacks digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise SvidError("the certificate's keyUsage allows signing certificates or CRLs")

    try:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None:
        missing = [
            name
            for name, oid in (
                ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
                ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH),
            )
            if oid not in eku
        ]
        if missing:
            raise SvidError(f"the certificate's extKeyUsage lacks {' and '.join(missing)}")

    try:
        san_ext = exts.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise SvidError("the certificate has no URI SAN (no SPIFFE ID)") from None
    uris = san_ext.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        found = ", ".join(uris) if uris else "none"
        raise SvidError(f"an X.509-SVID has exactly one URI SAN; this one has {found}")
    if len(cert.subject) == 0 and not san_ext.critical:
        raise SvidError("the certificate has an empty subject but a non-critical SAN")
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except SpiffeIdError as exc:
        raise SvidError(f"the URI SAN is not a valid SPIFFE ID: {exc}") from None
    if not spiffe_id.path:
        raise SvidError(f"{spiffe_id} has no path: it names a trust domain, not a workload")
    return str(spiffe_id)


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def glob_match(pattern: str, spiffe_id: str) -> bool:
    """Whether ``spiffe_id`` matches ``pattern``, where ``*`` matches any characters
    including ``/`` and everything else is literal (Istio ``principals`` semantics)."""
    return _glob_regex(pattern).fullmatch(spiffe_id) is not None


def compile_globs(patterns: list[str]) -> re.Pattern[str]:
    """One regex matching any of ``patterns`` (compile once at config time).

    An empty list compiles to a pattern that matches nothing.
    """
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{_glob_regex(p).pattern})" for p in patterns), re.DOTALL)
