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
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE, claim
from sidemesh.control.sqlite import StoreUnavailable, connect, transaction

__all__ = [
    "DB_FILE",
    "ConfigVersion",
    "ProxyStatus",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
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
    created_at  REAL NOT NULL,
    expires_at  REAL,
    revoked_at  REAL
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
CREATE INDEX IF NOT EXISTS proxies_by_service ON proxies (service, last_seen);
"""


_TOKEN_SELECT = ("SELECT id, secret_hash, service, created_at, expires_at, revoked_at "
                 "FROM tokens")


def _migrate_tokens(db: sqlite3.Connection) -> None:
    """Add the columns a store file from before token expiry lacks (``NULL``: never
    expires, not revoked, so its tokens keep working)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
    for column in ("expires_at", "revoked_at"):
        if column not in have:
            db.execute(f"ALTER TABLE tokens ADD COLUMN {column} REAL")


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
    """A sidecar token as stored: the secret only as its sha256.

    :param expires_at: Unix time after which it is refused; ``None``: never.
    :param revoked_at: Unix time it was revoked; ``None``: not revoked.
    """

    id: str
    secret_hash: str
    service: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


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

    def trust_domains(self) -> set[str]:
        """The trust domains the services' current configs name (``node.trust_domain``)."""
        ...

    def add_token(self, record: TokenRecord) -> None:
        ...

    def get_token(self, token_id: str) -> TokenRecord | None:
        ...

    def tokens(self) -> list[TokenRecord]:
        """Every token ever issued (revoked and expired ones too), oldest first."""
        ...

    def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        """Mark a token revoked (a second revocation keeps the first time); ``None`` when
        there is no such token."""
        ...

    def record_status(self, status: ProxyStatus, limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        """Record a report (``applied`` ``None`` keeps the one recorded before).

        :raises sidemesh.control.proxy_ids.ProxyIdTaken:
        :raises sidemesh.control.proxy_ids.TooManyProxies: (the rules are there)
        """
        ...

    def touch_proxy(self, proxy_id: str, service: str,
                    limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        """Mark a proxy as seen now (its watch polls) without changing its state; raises
        as :meth:`record_status` does."""
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
        self._db = connect(self.path)
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            _migrate_tokens(db)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """:raises StoreUnavailable: when SQLite cannot write (disk full, ...)."""
        with transaction(self._db, self._lock) as db:
            yield db

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

    def trust_domains(self) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT json_extract(c.doc, '$.node.trust_domain') FROM heads h "
                "JOIN configs c ON c.service = h.service AND c.version = h.version"
            ).fetchall()
        return {str(row[0]) for row in rows if isinstance(row[0], str)}

    # tokens ------------------------------------------------------------------------
    def add_token(self, record: TokenRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, secret_hash, service, created_at, expires_at, "
                "revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.secret_hash, record.service, record.created_at,
                 record.expires_at, record.revoked_at),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            row = self._db.execute(f"{_TOKEN_SELECT} WHERE id = ?", (token_id,)).fetchone()
        return TokenRecord(*row) if row else None

    def tokens(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._db.execute(f"{_TOKEN_SELECT} ORDER BY created_at, id").fetchall()
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        with self._tx() as db:
            db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (at, token_id))
            row = db.execute(f"{_TOKEN_SELECT} WHERE id = ?", (token_id,)).fetchone()
        return TokenRecord(*row) if row else None

    # proxies -----------------------------------------------------------------------
    def record_status(self, status: ProxyStatus, limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        with self._tx() as db:
            claim(db, status.id, status.service, limit, time.time())
            db.execute(
                "UPDATE proxies SET state = ?, version = ?, applied = COALESCE(?, applied), "
                "error = ?, plugins = ?, last_seen = ? WHERE id = ?",
                (status.state, status.version, status.applied, status.error,
                 json.dumps(status.plugins), status.last_seen, status.id),
            )

    def touch_proxy(self, proxy_id: str, service: str,
                    limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        now = time.time()
        with self._tx() as db:
            claim(db, proxy_id, service, limit, now)
            db.execute("UPDATE proxies SET last_seen = ? WHERE id = ?", (now, proxy_id))

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
