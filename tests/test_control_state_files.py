"""Issue 15 against real processes: the control plane's files are private whatever the
umask, and a config nested too deep is a clear error for `sidemesh validate`, `sidemesh
proxy` and its SIGHUP reload."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for

DEEP = "node: " + "[" * 20000


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    """Children started inside inherit ``mask``."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_every_state_file_is_0600_and_every_directory_0700(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "deep" / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("control", "--data", str(data), "--listen", f"127.0.0.1:{port}")
    with _umask(mask), ProxyProcess(*args) as control:
        control.wait_http(url + "/v1/trust-bundle")
        token = subprocess.run(
            [sys.executable, "-m", "sidemesh", "token", "--data", str(data), "--service",
             "web"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        cert = httpx.post(url + "/v1/certificates", json={"csr": _csr()}, timeout=10,
                          headers={"authorization": f"Bearer {token}"})
        assert cert.status_code == 200, cert.text
        found = {str(p.relative_to(data)): stat.S_IMODE(p.stat().st_mode)
                 for p in data.rglob("*")}
        found["."] = stat.S_IMODE(data.stat().st_mode)
    expected_files = {"admin.token", "sidemesh.db", "sidemesh.db-wal", "sidemesh.db-shm",
                      "ca/cluster.local/ca-key.pem", "ca/cluster.local/ca-cert.pem"}
    assert expected_files <= set(found), found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (data / name).is_dir() else 0o600)}
    assert not wrong, f"umask {mask:03o}: {wrong}"


def test_an_old_data_directory_is_made_private(tmp_path: Path) -> None:
    from sidemesh.control.sqlite import DB_FILE, SQLiteStore

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / DB_FILE).touch(mode=0o644)
    os.chmod(data / DB_FILE, 0o644)
    asyncio.run(SQLiteStore(data / DB_FILE).close())
    assert stat.S_IMODE((data / DB_FILE).stat().st_mode) == 0o600


def test_sidemesh_validate_reports_the_nesting_limit(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP)
    result = subprocess.run([sys.executable, "-m", "sidemesh", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "nested deeper than 64 levels" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def _write(path: Path, upstream: str, listen: int, admin: int) -> None:
    doc: dict[str, Any] = {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }
    path.write_text(yaml.safe_dump(doc))


def test_sighup_with_a_deeply_nested_file_keeps_the_old_config(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    path = tmp_path / "sidemesh.yaml"
    with Upstream(lambda _: Reply(body=b"v1")) as up:
        _write(path, up.address, listen, admin)
        with ProxyProcess("proxy", "-c", str(path), "--access-log", "off") as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            version = httpx.get(f"http://127.0.0.1:{admin}/config_dump",
                                timeout=5).json()["version"]
            path.write_text(DEEP)
            proc.signal(signal.SIGHUP)
            assert wait_for(lambda: "reload of" in proc.output, timeout=20), proc.output
            assert "nested deeper than 64 levels" in proc.output
            assert "Traceback" not in proc.output
            assert httpx.get(f"http://127.0.0.1:{admin}/config_dump",
                             timeout=5).json()["version"] == version
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "v1"
