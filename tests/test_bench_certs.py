"""The certificates the benchmark issues for ``{certs}`` make a working mTLS pair.

If they did not, chain-mtls would only show up as a "failed" row in a benchmark run.
"""

from __future__ import annotations

import importlib
import socket
import ssl
import stat
import threading
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_certs(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("bench.certs")


def _context(server: bool, directory: Path, service: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(directory / f"{service}.crt", directory / f"{service}.key")
    context.load_verify_locations(directory / "bundle.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False
    return context


def _uri_sans(tls: ssl.SSLSocket) -> list[str]:
    certificate = tls.getpeercert() or {}
    entries: tuple[tuple[str, str], ...] = certificate.get("subjectAltName", ())  # type: ignore[assignment]
    return [value for kind, value in entries if kind == "URI"]


def test_issued_svids_complete_a_mutual_tls_handshake(
    bench_certs: ModuleType, tmp_path: Path
) -> None:
    directory = bench_certs.issue_certificates(tmp_path / "certs")
    for name in ("a.crt", "a.key", "b.crt", "b.key", "bundle.pem"):
        assert (directory / name).is_file(), name
    assert stat.S_IMODE((directory / "a.key").stat().st_mode) == 0o600

    server_context = _context(True, directory, "b")
    client_context = _context(False, directory, "a")
    seen: dict[str, list[str]] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_context.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = _uri_sans(tls)
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_context.wrap_socket(raw) as tls:
                seen["server"] = _uri_sans(tls)
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(timeout=10)
    assert seen["client"] == ["spiffe://cluster.local/ns/default/sa/a"]
    assert seen["server"] == ["spiffe://cluster.local/ns/default/sa/b"]
