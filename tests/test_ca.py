"""The control plane's CA: what it issues, checked item by item against the SPIFFE
X.509-SVID checklist in shared/conformance/spiffe/CHECKLIST.md."""

from __future__ import annotations

import datetime as dt
import re
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sidemesh.api.spiffe import SpiffeIdError, SvidError, parse_spiffe_id, spiffe_id_from_cert
from sidemesh.control.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CertificateAuthority,
    CertificateAuthorityError,
    CertificateRequestError,
)

TD = "cluster.local"
ID = f"spiffe://{TD}/ns/default/sa/reviews"
CHECKLIST = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "conformance"
    / "spiffe"
    / "CHECKLIST.md"
)


def make_csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever-the-client-says")])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "data", TD)


@pytest.fixture
def leaf(ca: CertificateAuthority) -> x509.Certificate:
    pem = ca.sign_csr(make_csr(), namespace="default", service="reviews", ttl=3600)
    return x509.load_pem_x509_certificate(pem)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def verify(ca: CertificateAuthority, cert: x509.Certificate, at: dt.datetime | None = None) -> None:
    store = Store(x509.load_pem_x509_certificates(ca.trust_bundle_pem()))
    builder = PolicyBuilder().store(store)
    if at is not None:
        builder = builder.time(at)
    builder.build_client_verifier().verify(cert, [])


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# ------------------------------------------------------------------ checklist items

Check = Callable[[CertificateAuthority, x509.Certificate, Path], None]


def a1(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert urlsplit(uri_sans(leaf)[0]).scheme == "spiffe"
    assert uri_sans(leaf)[0].startswith("spiffe://")
    for bad in ("SPIFFE://td/x", "https://td/x"):
        with pytest.raises(SpiffeIdError):
            parse_spiffe_id(bad)


def a2(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    td = parse_spiffe_id(uri_sans(leaf)[0]).trust_domain
    assert td == TD and re.fullmatch(r"[a-z0-9._-]+", td)
    for bad in ("", "Cluster.Local", "td%41", "td/x"):
        with pytest.raises(SpiffeIdError):
            CertificateAuthority.open(tmp / f"bad-{len(bad)}", bad)


def a3(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    parts = urlsplit(uri_sans(leaf)[0])
    assert parts.username is None and parts.port is None
    for bad in ("spiffe://user@td/x", "spiffe://td:8443/x"):
        with pytest.raises(SpiffeIdError):
            parse_spiffe_id(bad)


def a4(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert "?" not in uri_sans(leaf)[0] and "#" not in uri_sans(leaf)[0]
    for bad in ("spiffe://td/x?y", "spiffe://td/x#y"):
        with pytest.raises(SpiffeIdError):
            parse_spiffe_id(bad)


def a5(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    segments = parse_spiffe_id(uri_sans(leaf)[0]).segments
    assert segments == ["ns", "default", "sa", "reviews"]
    assert all(re.fullmatch(r"[a-zA-Z0-9._-]+", s) and s not in (".", "..") for s in segments)
    for service in ("", ".", "..", "a/b", "%41", "a b"):
        with pytest.raises(CertificateRequestError):
            ca.sign_csr(make_csr(), namespace="default", service=service)
    with pytest.raises(CertificateRequestError):
        ca.sign_csr(make_csr(), namespace="../x", service="reviews")


def a6(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert parse_spiffe_id("spiffe://10.0.0.1/x").trust_domain == "10.0.0.1"
    with pytest.raises(SpiffeIdError):
        parse_spiffe_id("spiffe://[::1]/x")


def a7(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert len(uri_sans(leaf)[0].encode()) <= 2048
    prefix = f"spiffe://{TD}/ns/default/sa/"
    longest = "s" * (2048 - len(prefix))
    issued = ca.sign_csr(make_csr(), namespace="default", service=longest)
    assert len(uri_sans(x509.load_pem_x509_certificate(issued))[0]) == 2048
    with pytest.raises(CertificateRequestError, match="2048"):
        ca.sign_csr(make_csr(), namespace="default", service=longest + "s")


def b1(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(ID)]


def b2(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert parse_spiffe_id(uri_sans(leaf)[0]).path == "/ns/default/sa/reviews"


def b3(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert len(leaf.subject) == 0
    assert san.critical


def b4(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False


def b5(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert not ku.value.key_encipherment  # EC key: nothing to encipher with
    rsa_pem = ca.sign_csr(
        make_csr(rsa.generate_private_key(65537, 2048)), namespace="default", service="r"
    )
    rsa_ku = x509.load_pem_x509_certificate(rsa_pem).extensions.get_extension_for_class(
        x509.KeyUsage
    )
    assert rsa_ku.critical and rsa_ku.value.digital_signature and rsa_ku.value.key_encipherment
    assert not rsa_ku.value.key_cert_sign and not rsa_ku.value.crl_sign


def b6(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku


def c1(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    root = ca.certificate
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def c2(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    root_id = parse_spiffe_id(uri_sans(ca.certificate)[0])
    assert root_id.path == "" and root_id.trust_domain == TD


def c3(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    with pytest.raises(SvidError, match="CA certificate"):
        spiffe_id_from_cert(der(ca.certificate))


def c4(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    with pytest.raises(x509.ExtensionNotFound):
        ca.certificate.extensions.get_extension_for_class(x509.NameConstraints)


def d1(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    verify(ca, leaf)
    with pytest.raises(VerificationError):
        verify(ca, leaf, at=leaf.not_valid_after_utc + dt.timedelta(seconds=1))
    other = CertificateAuthority.open(tmp / "other", TD)
    foreign = other.sign_csr(make_csr(), namespace="default", service="reviews")
    with pytest.raises(VerificationError):
        verify(ca, x509.load_pem_x509_certificate(foreign))


def d2(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    assert spiffe_id_from_cert(der(leaf)) == ID


def d3(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    # A leaf of trust domain B does not chain to trust domain A's bundle.
    other = CertificateAuthority.open(tmp / "td-b", "b.example")
    leaf_b = x509.load_pem_x509_certificate(
        other.sign_csr(make_csr(), namespace="default", service="reviews")
    )
    assert parse_spiffe_id(spiffe_id_from_cert(der(leaf_b))).trust_domain == "b.example"
    with pytest.raises(VerificationError):
        verify(ca, leaf_b)


def d4(ca: CertificateAuthority, leaf: x509.Certificate, tmp: Path) -> None:
    # Nothing to authorise on but the SPIFFE ID: no CN, no DNS SAN in an issued leaf,
    # whatever the CSR's subject said.
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []


CHECKS: dict[str, Check] = {
    "A1": a1, "A2": a2, "A3": a3, "A4": a4, "A5": a5, "A6": a6, "A7": a7,
    "B1": b1, "B2": b2, "B3": b3, "B4": b4, "B5": b5, "B6": b6,
    "C1": c1, "C2": c2, "C3": c3, "C4": c4,
    "D1": d1, "D2": d2, "D3": d3, "D4": d4,
}  # fmt: skip
#: Items that are not about issued certificates or IDs, and why.
NOT_ABOUT_ISSUED_CERTS = {
    "E1": "JWK bundle publishing: sidemesh distributes the bundle as PEM",
    "E2": "JWK bundle consumption: sidemesh distributes the bundle as PEM",
}


def checklist_items() -> list[tuple[str, str]]:
    if not CHECKLIST.exists():
        return []
    found = re.findall(r"^- \[[ x]\] ([A-Z][0-9]+) (.+)$", CHECKLIST.read_text(), re.M)
    return [(item_id, text.strip()) for item_id, text in found]


ITEMS = checklist_items()


def test_checklist_is_present_and_every_item_is_accounted_for() -> None:
    if not CHECKLIST.exists():
        pytest.skip(f"{CHECKLIST} not found")
    ids = {item_id for item_id, _ in ITEMS}
    assert ids, "no checklist items parsed"
    unaccounted = ids - set(CHECKS) - set(NOT_ABOUT_ISSUED_CERTS)
    assert not unaccounted, f"checklist items with no check: {sorted(unaccounted)}"


@pytest.mark.parametrize(
    ("item_id", "text"),
    [item for item in ITEMS if item[0] in CHECKS],
    ids=[f"{i}: {t[:60]}" for i, t in ITEMS if i in CHECKS],
)
def test_checklist_item(
    item_id: str, text: str, ca: CertificateAuthority, leaf: x509.Certificate, tmp_path: Path
) -> None:
    CHECKS[item_id](ca, leaf, tmp_path)


# ------------------------------------------------------------------ CA lifecycle


def test_ca_is_created_once_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = CertificateAuthority.open(data, TD)
    key_before = (data / CA_KEY_FILE).read_bytes()
    leaf = x509.load_pem_x509_certificate(
        first.sign_csr(make_csr(), namespace="default", service="reviews")
    )
    again = CertificateAuthority.open(data, TD)
    assert again.trust_bundle_pem() == first.trust_bundle_pem()
    assert (data / CA_KEY_FILE).read_bytes() == key_before
    verify(again, leaf)  # certificates issued before a restart stay valid


def test_key_file_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CertificateAuthority.open(data, TD)
    assert stat.S_IMODE((data / CA_KEY_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in data.iterdir()) == [CA_CERT_FILE, CA_KEY_FILE]


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CertificateAuthority.open(data, TD)
    (data / CA_KEY_FILE).chmod(0o644)
    with pytest.raises(CertificateAuthorityError, match="chmod 600"):
        CertificateAuthority.open(data, TD)


def test_data_dir_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.open(tmp_path, TD)
    with pytest.raises(CertificateAuthorityError, match=r"not of spiffe://other\.local"):
        CertificateAuthority.open(tmp_path, "other.local")


def test_trust_bundle_is_the_ca_certificate(ca: CertificateAuthority) -> None:
    assert x509.load_pem_x509_certificates(ca.trust_bundle_pem()) == [ca.certificate]


# ------------------------------------------------------------------ issuing


def test_identity_comes_from_the_caller_not_the_csr(ca: CertificateAuthority) -> None:
    pem = ca.sign_csr(make_csr(), namespace="prod", service="ratings")
    assert spiffe_id_from_cert(der(x509.load_pem_x509_certificate(pem))) == (
        f"spiffe://{TD}/ns/prod/sa/ratings"
    )


@pytest.mark.parametrize(
    "sans",
    [
        [x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/default/sa/admin")],
        [x509.UniformResourceIdentifier(ID), x509.UniformResourceIdentifier(ID + "2")],
        [x509.UniformResourceIdentifier(ID), x509.DNSName("reviews.default.svc")],
        [x509.DNSName("admin")],
    ],
    ids=["foreign-uri", "two-uris", "extra-dns", "dns-only"],
)
def test_csr_claiming_another_identity_is_rejected(
    ca: CertificateAuthority, sans: list[x509.GeneralName]
) -> None:
    with pytest.raises(CertificateRequestError, match="but the caller is"):
        ca.sign_csr(make_csr(sans=sans), namespace="default", service="reviews")


def test_csr_naming_the_callers_own_identity_is_accepted(ca: CertificateAuthority) -> None:
    pem = ca.sign_csr(
        make_csr(sans=[x509.UniformResourceIdentifier(ID)]), namespace="default", service="reviews"
    )
    assert spiffe_id_from_cert(der(x509.load_pem_x509_certificate(pem))) == ID


def test_csr_with_bad_signature_is_rejected(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr())
    raw = bytearray(csr.public_bytes(serialization.Encoding.DER))
    raw[-3] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(raw)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRequestError, match="signature"):
        ca.sign_csr(tampered, namespace="default", service="reviews")


@pytest.mark.parametrize(
    ("csr", "reason"),
    [
        (b"hello", "not a PEM certificate request"),
        (make_csr(rsa.generate_private_key(65537, 1024)), "too small"),
        (make_csr(ec.generate_private_key(ec.SECP256K1())), "unsupported EC curve"),
    ],
    ids=["garbage", "rsa-1024", "secp256k1"],
)
def test_bad_csrs_are_clear_errors(ca: CertificateAuthority, csr: bytes, reason: str) -> None:
    with pytest.raises(CertificateRequestError, match=reason):
        ca.sign_csr(csr, namespace="default", service="reviews")


def test_lifetime_is_short_backdated_and_serials_random(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    certs = [
        x509.load_pem_x509_certificate(
            ca.sign_csr(make_csr(), namespace="default", service="reviews", ttl=600)
        )
        for _ in range(3)
    ]
    for cert in certs:
        assert cert.not_valid_before_utc < now - dt.timedelta(seconds=30)
        assert now + dt.timedelta(seconds=500) < cert.not_valid_after_utc
        assert cert.not_valid_after_utc <= now + dt.timedelta(seconds=700)
        assert cert.serial_number.bit_length() > 64
    assert len({c.serial_number for c in certs}) == 3
    default = x509.load_pem_x509_certificate(
        ca.sign_csr(make_csr(), namespace="default", service="reviews")
    )
    assert default.not_valid_after_utc - now <= dt.timedelta(hours=24, minutes=1)
    for ttl in (0, -1, 10**9):
        with pytest.raises(CertificateRequestError, match="ttl"):
            ca.sign_csr(make_csr(), namespace="default", service="reviews", ttl=ttl)


def test_certificate_response_is_the_documented_contract(ca: CertificateAuthority) -> None:
    body = ca.certificate_response(make_csr(), namespace="default", service="reviews", ttl=600)
    assert sorted(body) == ["certificate", "expires_at", "trust_bundle"]
    leaf = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert spiffe_id_from_cert(der(leaf)) == ID
    assert body["trust_bundle"].encode() == ca.trust_bundle_pem()
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert expires == leaf.not_valid_after_utc.replace(microsecond=0)
