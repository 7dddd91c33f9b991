"""Backup and restore as docs/operations.md tells them, for both stores: the restored
control plane has every version and the same CA."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from sidemesh.testing.control import ControlServer
from sidemesh.testing.etcd import EtcdTestCluster

# The command of docs/operations.md, "Backup and restore".
SQLITE_BACKUP = ("import sqlite3, sys; "
                 "sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))")


def config(n: int) -> dict[str, Any]:
    return {"node": {"service": "web"},
            "clusters": [{"name": "app", "endpoints": [{"address": f"127.0.0.1:{n}"}]}],
            "listeners": []}


def _versions(cp: ControlServer) -> list[int]:
    answer = httpx.get(f"{cp.url}/v1/services/web/history", headers=cp.admin, timeout=10)
    return [v["version"] for v in answer.json()["versions"]]


def _bundle(cp: ControlServer) -> str:
    bundle: str = httpx.get(f"{cp.url}/v1/trust-bundle", timeout=10).json()["trust_bundle"]
    return bundle


def _put(cp: ControlServer, n: int) -> None:
    assert httpx.put(f"{cp.url}/v1/services/web/config", json=config(n), headers=cp.admin,
                     timeout=10).status_code == 200


def test_a_sqlite_backup_taken_while_running_restores_every_version(tmp_path: Path) -> None:
    data, backup, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    backup.mkdir()
    with ControlServer(data) as cp:
        for n in (1, 2, 3):
            _put(cp, n)
        bundle = _bundle(cp)
        # while it runs, its last versions still in the WAL
        assert (data / "sidemesh.db-wal").stat().st_size > 0
        subprocess.run([sys.executable, "-c", SQLITE_BACKUP, str(data / "sidemesh.db"),
                        str(backup / "sidemesh.db")], check=True, timeout=30)
        shutil.copytree(data / "ca", backup / "ca")
        _put(cp, 4)  # after the backup: not in it
    shutil.copytree(backup, restored)
    os.chmod(restored / "sidemesh.db", 0o600)
    with ControlServer(restored) as cp:
        assert _versions(cp) == [3, 2, 1]
        assert _bundle(cp) == bundle
        head = httpx.get(f"{cp.url}/v1/services/web/config", headers=cp.admin, timeout=10)
        assert head.json()["config"] == config(3)


def test_an_etcd_snapshot_restores_every_version_and_the_ca(tmp_path: Path) -> None:
    snapshot = tmp_path / "etcd.db"
    with (EtcdTestCluster(tmp_path / "old", members=1) as etcd,
          ControlServer(tmp_path / "a", store=etcd.store_url) as cp):
        for n in (1, 2):
            _put(cp, n)
        bundle = _bundle(cp)
        saved = subprocess.run(
            ["etcdctl", "--endpoints", etcd.endpoints[0], "snapshot", "save", str(snapshot)],
            env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True,
            timeout=30)
        assert saved.returncode == 0, saved.stderr
    fresh = EtcdTestCluster(tmp_path / "new", members=1)
    peer = f"http://127.0.0.1:{fresh.peer_ports[0]}"
    restored = subprocess.run(
        ["etcdctl", "snapshot", "restore", str(snapshot), "--name", "m0",
         "--initial-cluster", f"m0={peer}", "--initial-advertise-peer-urls", peer,
         "--data-dir", str(tmp_path / "new" / "m0")],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=30)
    assert restored.returncode == 0, restored.stderr
    with fresh, ControlServer(tmp_path / "b", store=fresh.store_url) as cp:
        assert _versions(cp) == [2, 1]
        assert _bundle(cp) == bundle
        _put(cp, 3)  # and it goes on from there
        assert _versions(cp) == [3, 2, 1]
