"""SPIFFE ID parsing, leaf SVID checks and allow-list globs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidemesh.api.spiffe import (
    SpiffeIdError,
    SvidError,
    compile_globs,
    glob_match,
    parse_spiffe_id,
    spiffe_id_from_cert,
    workload_id,
)

VALID = [
    "spiffe://cluster.local/ns/default/sa/productpage",
    "spiffe://td",
    "spiffe://my_td-1.example/a/B/c.d-e_f",
    "spiffe://10.0.0.1/x",
    "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
]

INVALID = {
    "https://td/x": "scheme",
    "SPIFFE://td/x": "lower-case",
    "spiffe:td/x": "scheme",
    "spiffe://": "empty",
    "spiffe:///x": "empty",
    "spiffe://TD/x": "lower-case",
    "spiffe://td%41/x": "percent",
    "spiffe://user@td/x": "userinfo",
    "spiffe://td:8443/x": "port",
    "spiffe://[::1]/x": "lower-case letters",
    "spiffe://td/x?a=b": "query",
    "spiffe://td/x#frag": "fragment",
    "spiffe://td/x/": "empty path segment",
    "spiffe://td//x": "empty path segment",
    "spiffe://td/a/../b": "relative",
    "spiffe://td/./b": "relative",
    "spiffe://td/%41": "percent",
    "spiffe://td/a b": "only letters",
    "spiffe://td/é": "only letters",
    "spiffe://td/" + "a" * 2048: "2048",
    "spiffe://" + "a" * 256 + "/x": "255",
    "": "empty",
}


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_parse_and_round_trip(value: str) -> None:
    assert str(parse_spiffe_id(value)) == value


@pytest.mark.parametrize(("value", "reason"), INVALID.items())
def test_invalid_ids_are_rejected_with_the_rule(value: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError, match=reason):
        parse_spiffe_id(value)


def test_workload_id_builds_istio_identity() -> None:
    assert workload_id("cluster.local", "default", "reviews") == (
        "spiffe://cluster.local/ns/default/sa/reviews"
    )
    for bad in ("", "..", "a/b", "a%2f"):
        with pytest.raises(SpiffeIdError):
            workload_id("cluster.local", "default", bad)


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        ("*", "spiffe://td/ns/a/sa/b", True),
        ("spiffe://td/*", "spiffe://td/ns/a/sa/b", True),
        ("spiffe://td/*", "spiffe://other/ns/a/sa/b", False),
        ("spiffe://td/ns/default/sa/*", "spiffe://td/ns/default/sa/reviews", True),
        ("spiffe://td/ns/default/sa/*", "spiffe://td/ns/prod/sa/reviews", False),
        ("*/sa/reviews", "spiffe://td/ns/x/sa/reviews", True),
        ("spiffe://td/ns/default/sa/reviews", "spiffe://td/ns/default/sa/reviews", True),
        ("spiffe://td/ns/default/sa/reviews", "spiffe://td/ns/default/sa/reviews2", False),
        ("spiffe://td/ns/d.fault/sa/x", "spiffe://td/ns/dXfault/sa/x", False),
        ("spiffe://td/ns/?/sa/x", "spiffe://td/ns/a/sa/x", False),
    ],
)
def test_glob_match(pattern: str, identity: str, expected: bool) -> None:
    assert glob_match(pattern, identity) is expected
    assert (compile_globs([pattern]).fullmatch(identity) is not None) is expected


def test_compile_globs_any_of_and_empty() -> None:
    rx = compile_globs(["spiffe://td/ns/a/*", "spiffe://td/ns/b/sa/x"])
    assert rx.fullmatch("spiffe://td/ns/a/sa/y")
    assert rx.fullmatch("spiffe://td/ns/b/sa/x")
    assert not rx.fullmatch("spiffe://td/ns/b/sa/y")
    assert not compile_globs([]).fullmatch("spiffe://td/ns/a/sa/y")


# ------------------------------------------------------------------ leaf checks


def _cert(
    *,
    uris: list[str],
    ca: bool = False,
    key_usage: dict[str, bool] | None = None,
    ku_critical: bool = True,
    eku: list[x509.ObjectIdentifier] | None = None,
    subject: str | None = None,
    san_critical: bool = True,
) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    flags = {"digital_signature": True, "key_cert_sign": False, "crl_sign": False}
    if key_usage is not None:
        flags.update(key_usage)
    if key_usage != {}:
        builder = builder.add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **flags,
            ),
            critical=ku_critical,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=san_critical,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


GOOD = "spiffe://td/ns/default/sa/reviews"
BOTH = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_good_leaf_yields_its_id() -> None:
    assert spiffe_id_from_cert(_cert(uris=[GOOD], eku=BOTH)) == GOOD
    assert spiffe_id_from_cert(_cert(uris=[GOOD])) == GOOD  # EKU is optional


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"uris": [GOOD, "spiffe://td/ns/default/sa/other"]}, "exactly one URI SAN"),
        ({"uris": []}, "no URI SAN"),
        ({"uris": ["spiffe://td"]}, "no path"),
        ({"uris": ["https://td/x"]}, "not a valid SPIFFE ID"),
        ({"uris": ["spiffe://TD/x"]}, "not a valid SPIFFE ID"),
        ({"uris": ["spiffe://td:443/x"]}, "port"),
        ({"uris": ["spiffe://td/x/"]}, "empty path segment"),
        ({"uris": ["spiffe://td/a/../b"]}, "relative"),
        ({"uris": ["spiffe://td/%41"]}, "percent"),
        ({"uris": [GOOD], "ca": True}, "CA certificate"),
        ({"uris": [GOOD], "key_usage": {"key_cert_sign": True}}, "signing certificates"),
        ({"uris": [GOOD], "key_usage": {"crl_sign": True}}, "signing certificates"),
        ({"uris": [GOOD], "key_usage": {"digital_signature": False}}, "digitalSignature"),
        ({"uris": [GOOD], "key_usage": {}}, "no keyUsage"),
        ({"uris": [GOOD], "ku_critical": False}, "not critical"),
        ({"uris": [GOOD], "eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "clientAuth"),
        ({"uris": [GOOD], "san_critical": False}, "non-critical SAN"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_leaves_are_rejected_with_the_reason(kwargs: dict, reason: str) -> None:
    with pytest.raises(SvidError, match=reason):
        spiffe_id_from_cert(_cert(**kwargs))


def test_non_critical_san_is_fine_with_a_subject() -> None:
    assert spiffe_id_from_cert(_cert(uris=[GOOD], subject="reviews", san_critical=False)) == GOOD


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(SvidError, match=r"not a DER X\.509 certificate"):
        spiffe_id_from_cert(b"not a certificate")
