"""HTTPS for the control API: configs, tokens and trust bundles never cross the network
in clear text, so nobody in the middle can install his own CA.

The server certificate is issued at each start by the control plane's own CA (the one
that signs the sidecars' SPIFFE certificates) for the names the API is reached by.
Sidecars trust it through a bundle they were given beforehand (``sidemesh proxy
--control-ca FILE``; ``sidemesh control --print-ca`` prints it), never through anything
the server itself says. Plain HTTP stays the default on loopback, where nobody is in the
middle (the demo, tests, a single machine), and elsewhere needs ``--insecure-http``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.files import private_dir, private_file

__all__ = ["SERVER_LIFETIME", "is_loopback", "server_certificate"]

SERVER_LIFETIME = dt.timedelta(days=365)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def server_certificate(
    ca: CertificateAuthority, hosts: list[str], directory: Path
) -> tuple[Path, Path]:
    """Issue the control API's certificate for ``hosts`` (plus localhost and the loopback
    addresses) into ``directory``; returns (certificate chain, key) paths, both 0600."""
    names = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]))
    # A wildcard listen address is reached by the machine's names, which it cannot know.
    names = [n for n in names if n not in ("0.0.0.0", "::", "")]
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.sign_server(key.public_key(), [_san(n) for n in names], SERVER_LIFETIME)
    directory = private_dir(directory)
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for path, data in ((cert_path, chain + ca.trust_bundle_pem()), (key_path, key_pem)):
        private_file(path)  # 0600 before anything secret is in it
        path.write_bytes(data)
    return cert_path, key_path
