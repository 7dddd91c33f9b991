"""The control plane's store: config versions, sidecar tokens, proxy status.

:class:`Store` is the interface the API uses; :class:`SQLiteStore` is the embedded
default (one file under ``--data``, WAL mode). Every write is one transaction, so a
crash mid-write leaves the last committed version as the head, and every version is
kept (rollback creates a new version with an old version's content, as
``kubectl rollout undo`` does: versions only ever grow, so proxies never see one go
backwards).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sidemesh.config.validate import config_digest

__all__ = [
    "DB_FILE",
    "ConfigVersion",
    "ProxyStatus",
    "SQLiteStore",
    "Store",
    "TokenRecord",
    "VersionNotFound",
]

DB_FILE = "sidemesh.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (
    service     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    author      TEXT NOT NULL,
    rollback_of INTEGER,
    PRIMARY KEY (service, version)
);
CREATE TABLE IF NOT EXISTS heads (
    service TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    service     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS proxies (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    state       TEXT,
    version     INTEGER,
    applied     INTEGER,
    error       TEXT,
    plugins     TEXT NOT NULL,
    last_seen   REAL NOT NULL
);
"""


class VersionNotFound(LookupError):
    """A service or version that the store does not have."""


@dataclass(frozen=True)
class ConfigVersion:
    """One stored version of a service's config."""

    service: str
    version: int
    config: dict[str, Any]
    digest: str
    created_at: float
    author: str
    rollback_of: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "digest": self.digest,
            "created_at": self.created_at,
            "author": self.author,
            "rollback_of": self.rollback_of,
        }


@dataclass(frozen=True)
class TokenRecord:
    """A sidecar token as stored: the secret only as its sha256."""

    id: str
    secret_hash: str
    service: str
    created_at: float


@dataclass(frozen=True)
class ProxyStatus:
    """What a proxy last reported.

    :param state: ``ACK`` or ``NACK`` of ``version``; ``None`` before its first report.
    :param applied: the version it is serving (an ACK moves it; a NACK does not).
    :param plugins: installed plugins: ``[{"name", "version", "distribution"}]``.
    """

    id: str
    service: str
    state: str | None
    version: int | None
    applied: int | None
    error: str | None
    plugins: list[dict[str, Any]] = field(default_factory=list)
    last_seen: float = 0.0


class Store(Protocol):
    """What the control API needs from a store (a distributed one can implement it)."""

    def put_config(self, service: str, doc: dict[str, Any], author: str) -> ConfigVersion:
        """Store ``doc`` as the next version; an unchanged doc returns the head as is."""
        ...

    def get_config(self, service: str, version: int | None = None) -> ConfigVersion | None:
        ...

    def history(self, service: str) -> list[ConfigVersion]:
        """Every version, newest first."""
        ...

    def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        """A new head with ``version``'s content. :raises VersionNotFound:"""
        ...

    def services(self) -> list[str]:
        ...

    def add_token(self, record: TokenRecord) -> None:
        ...

    def get_token(self, token_id: str) -> TokenRecord | None:
        ...

    def record_status(self, status: ProxyStatus) -> None:
        ...

    def touch_proxy(self, proxy_id: str, service: str) -> None:
        """Mark a proxy as seen now (its watch polls) without changing its state."""
        ...

    def proxies(self) -> list[ProxyStatus]:
        ...

    def close(self) -> None:
        ...


class SQLiteStore:
    """The embedded store. Safe to share between threads; the ``sidemesh token``
    command may write to the same file while the control plane runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so
        # nothing is left open between calls.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed version survives a power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # configs -----------------------------------------------------------------------
    def _head(self, db: sqlite3.Connection, service: str) -> int | None:
        row = db.execute("SELECT version FROM heads WHERE service = ?", (service,)).fetchone()
        return int(row[0]) if row else None

    def _row(self, db: sqlite3.Connection, service: str, version: int) -> ConfigVersion | None:
        row = db.execute(
            "SELECT version, doc, digest, created_at, author, rollback_of FROM configs "
            "WHERE service = ? AND version = ?",
            (service, version),
        ).fetchone()
        if row is None:
            return None
        return ConfigVersion(service, int(row[0]), json.loads(row[1]), row[2], row[3], row[4],
                             row[5])

    def _append(
        self, db: sqlite3.Connection, service: str, doc: dict[str, Any], author: str,
        rollback_of: int | None,
    ) -> ConfigVersion:
        head = self._head(db, service)
        version = (head or 0) + 1
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        created = time.time()
        digest = config_digest(doc)
        db.execute(
            "INSERT INTO configs (service, version, doc, digest, created_at, author, "
            "rollback_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (service, version, text, digest, created, author, rollback_of),
        )
        db.execute(
            "INSERT INTO heads (service, version) VALUES (?, ?) "
            "ON CONFLICT(service) DO UPDATE SET version = excluded.version",
            (service, version),
        )
        return ConfigVersion(service, version, json.loads(text), digest, created, author,
                             rollback_of)

    def put_config(self, service: str, doc: dict[str, Any], author: str) -> ConfigVersion:
        with self._tx() as db:
            head = self._head(db, service)
            current = self._row(db, service, head) if head is not None else None
            if current is not None and current.digest == config_digest(doc):
                return current
            return self._append(db, service, doc, author, None)

    def get_config(self, service: str, version: int | None = None) -> ConfigVersion | None:
        with self._lock:
            if version is None:
                version = self._head(self._db, service)
                if version is None:
                    return None
            return self._row(self._db, service, version)

    def history(self, service: str) -> list[ConfigVersion]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version FROM configs WHERE service = ? ORDER BY version DESC",
                (service,),
            ).fetchall()
            found = [self._row(self._db, service, int(r[0])) for r in rows]
        return [v for v in found if v is not None]

    def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        with self._tx() as db:
            target = self._row(db, service, version)
            if target is None:
                raise VersionNotFound(f"service {service!r} has no version {version}")
            return self._append(db, service, target.config, author, version)

    def services(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT service FROM heads ORDER BY service").fetchall()
        return [str(r[0]) for r in rows]

    # tokens ------------------------------------------------------------------------
    def add_token(self, record: TokenRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, secret_hash, service, created_at) VALUES (?, ?, ?, ?)",
                (record.id, record.secret_hash, record.service, record.created_at),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, secret_hash, service, created_at FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        return TokenRecord(*row) if row else None

    # proxies -----------------------------------------------------------------------
    def record_status(self, status: ProxyStatus) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO proxies (id, service, state, version, applied, error, plugins, "
                "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "service = excluded.service, state = excluded.state, "
                "version = excluded.version, applied = excluded.applied, "
                "error = excluded.error, plugins = excluded.plugins, "
                "last_seen = excluded.last_seen",
                (status.id, status.service, status.state, status.version, status.applied,
                 status.error, json.dumps(status.plugins), status.last_seen),
            )

    def touch_proxy(self, proxy_id: str, service: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO proxies (id, service, plugins, last_seen) VALUES (?, ?, '[]', ?) "
                "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
                (proxy_id, service, time.time()),
            )

    def proxies(self) -> list[ProxyStatus]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, service, state, version, applied, error, plugins, last_seen "
                "FROM proxies ORDER BY service, id"
            ).fetchall()
        return [ProxyStatus(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7])
                for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
