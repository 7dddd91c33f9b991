"""``--store``: which backend keeps the control plane's state."""

from __future__ import annotations

from pathlib import Path

from sidemesh.control.sqlite import DB_FILE, SQLiteStore
from sidemesh.control.store import Store

__all__ = ["open_store"]


def open_store(spec: str | None, data_dir: Path, prefix: str | None = None) -> Store:
    """The store ``spec`` names; an etcd one connects on first use.

    :raises ValueError: for a spec that is neither ``sqlite`` nor ``etcd://...``.
    :raises StoreUnavailable: when the SQLite file cannot be opened.
    """
    if spec in (None, "", "sqlite"):
        return SQLiteStore(data_dir / DB_FILE)
    scheme, sep, rest = (spec or "").partition("://")
    if scheme != "etcd" or not sep or not rest:
        raise ValueError(f"--store {spec!r}: use sqlite or etcd://host:port[,host:port...]")
    # Imported here: the gRPC stack costs its import time only to etcd users.
    try:
        from sidemesh.control.etcd import DEFAULT_PREFIX, EtcdStore
        from sidemesh.control.etcd_client import EtcdCluster, parse_endpoints
    except ImportError as exc:
        raise ValueError(f"--store {spec}: the etcd client is not installed ({exc.name}); "
                         "pip install 'sidemesh[etcd]'") from None

    return EtcdStore(EtcdCluster(parse_endpoints(rest)), prefix or DEFAULT_PREFIX)
