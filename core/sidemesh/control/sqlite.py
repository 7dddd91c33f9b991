"""The embedded store: one SQLite file under ``--data`` (WAL mode), opened private, with
write transactions that report SQLite's own error. The CAs stay files beside it
(``DIR/ca/<trust domain>/``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sidemesh.config.validate import config_digest
from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.files import private_dir, private_file
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE, RecentTouches, claim
from sidemesh.control.store import (
    ConfigVersion,
    Instance,
    OnChange,
    ProxyStatus,
    StoreUnavailable,
    TokenRecord,
    VersionNotFound,
)

__all__ = ["DB_FILE", "SQLiteStore", "connect", "transaction"]

DB_FILE = "sidemesh.db"

log = logging.getLogger("sidemesh.control")


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the database file, mode 0600 like its -wal and -shm files."""
    # SQLite creates the -wal and -shm files with the database file's mode; ones left by
    # an older version are made private here.
    private_file(path)
    for leftover in ("-wal", "-shm"):
        private_file(path.with_name(path.name + leftover), create=False)
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so
    # nothing is left open between calls.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed version survives a power loss, not only a process crash.
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        db.close()
        raise StoreUnavailable(f"cannot open the store {path}: {exc}", _full(exc)) from exc
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction, committed when the block ends, rolled back if it raises.

    :raises StoreUnavailable: when SQLite cannot write (disk full, I/O error, locked).
    """
    with lock:
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (SQLITE_FULL may): a second
                # ROLLBACK would replace the real error with "cannot rollback".
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the store cannot write: {exc}", _full(exc)) from exc


def _full(exc: sqlite3.Error) -> bool:
    # Extended result codes keep the primary code in the low byte; errors raised by the
    # sqlite3 module itself have no code.
    code: int = getattr(exc, "sqlite_errorcode", 0) or 0
    return code & 0xFF == sqlite3.SQLITE_FULL


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
CREATE TABLE IF NOT EXISTS instances (
    service       TEXT NOT NULL,
    id            TEXT NOT NULL,
    address       TEXT NOT NULL,
    labels        TEXT NOT NULL,
    identity      TEXT,
    registered_at REAL NOT NULL,
    expires_at    REAL NOT NULL,
    PRIMARY KEY (service, id)
);
"""

#: Seconds between two sweeps for instances past their TTL (so a silent one is dropped,
#: and its service's watchers woken, within its TTL plus this).
EXPIRY_SWEEP = 0.5


_TOKEN_SELECT = ("SELECT id, secret_hash, service, created_at, expires_at, revoked_at "
                 "FROM tokens")


def _migrate_tokens(db: sqlite3.Connection) -> None:
    """Add the columns a store file from before token expiry lacks (``NULL``: never
    expires, not revoked, so its tokens keep working)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
    for column in ("expires_at", "revoked_at"):
        if column not in have:
            db.execute(f"ALTER TABLE tokens ADD COLUMN {column} REAL")


class SQLiteStore:
    """The embedded store. Safe to share between threads; the ``sidemesh token``
    command may write to the same file while the control plane runs (its changes wake
    no long poll: they are seen at the poll's next answer)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._on_change: OnChange = _ignore
        self._authorities: dict[str, CertificateAuthority] = {}
        self._touched = RecentTouches()
        self._sweeper: asyncio.Task[None] | None = None
        self._db = connect(self.path)
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            _migrate_tokens(db)

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._sweeper = asyncio.create_task(self._sweep())

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

    async def put_config(self, service: str, doc: dict[str, Any], author: str
                         ) -> ConfigVersion:
        with self._tx() as db:
            head = self._head(db, service)
            current = self._row(db, service, head) if head is not None else None
            if current is not None and current.digest == config_digest(doc):
                return current
            stored = self._append(db, service, doc, author, None)
        self._on_change(service)
        return stored

    async def get_config(self, service: str, version: int | None = None
                         ) -> ConfigVersion | None:
        with self._lock:
            if version is None:
                version = self._head(self._db, service)
                if version is None:
                    return None
            return self._row(self._db, service, version)

    async def history(self, service: str) -> list[ConfigVersion]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version FROM configs WHERE service = ? ORDER BY version DESC",
                (service,),
            ).fetchall()
            found = [self._row(self._db, service, int(r[0])) for r in rows]
        return [v for v in found if v is not None]

    async def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        with self._tx() as db:
            target = self._row(db, service, version)
            if target is None:
                raise VersionNotFound(f"service {service!r} has no version {version}")
            stored = self._append(db, service, target.config, author, version)
        self._on_change(service)
        return stored

    async def services(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT service FROM heads ORDER BY service").fetchall()
        return [str(r[0]) for r in rows]

    async def trust_domains(self) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT json_extract(c.doc, '$.node.trust_domain') FROM heads h "
                "JOIN configs c ON c.service = h.service AND c.version = h.version"
            ).fetchall()
        return {str(row[0]) for row in rows if isinstance(row[0], str)}

    # tokens ------------------------------------------------------------------------
    async def add_token(self, record: TokenRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, secret_hash, service, created_at, expires_at, "
                "revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.secret_hash, record.service, record.created_at,
                 record.expires_at, record.revoked_at),
            )

    async def get_token(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            row = self._db.execute(f"{_TOKEN_SELECT} WHERE id = ?", (token_id,)).fetchone()
        return TokenRecord(*row) if row else None

    async def tokens(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._db.execute(f"{_TOKEN_SELECT} ORDER BY created_at, id").fetchall()
        return [TokenRecord(*row) for row in rows]

    async def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        with self._tx() as db:
            db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (at, token_id))
            row = db.execute(f"{_TOKEN_SELECT} WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            return None
        record = TokenRecord(*row)
        # Its long polls re-check their token when woken: a revoked sidecar is refused
        # now, not at the end of its poll.
        self._on_change(record.service)
        return record

    async def authority(self, trust_domain: str) -> CertificateAuthority:
        ca = self._authorities.get(trust_domain)
        if ca is None:
            # DIR/ca too: open() makes private only the directories it is given or creates.
            cas = private_dir(self.path.parent / "ca")
            ca = CertificateAuthority.open(cas / trust_domain, trust_domain)
            self._authorities[trust_domain] = ca
        return ca

    # proxies -----------------------------------------------------------------------
    async def record_status(self, status: ProxyStatus,
                            limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        with self._tx() as db:
            claim(db, status.id, status.service, limit, time.time())
            db.execute(
                "UPDATE proxies SET state = ?, version = ?, applied = COALESCE(?, applied), "
                "error = ?, plugins = ?, last_seen = ? WHERE id = ?",
                (status.state, status.version, status.applied, status.error,
                 json.dumps(status.plugins), status.last_seen, status.id),
            )
        self._touched.record(status.id, status.service)

    async def touch_proxy(self, proxy_id: str, service: str,
                          limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        if self._touched.recent(proxy_id, service):
            return
        now = time.time()
        with self._tx() as db:
            claim(db, proxy_id, service, limit, now)
            db.execute("UPDATE proxies SET last_seen = ? WHERE id = ?", (now, proxy_id))
        self._touched.record(proxy_id, service)

    async def proxies(self) -> list[ProxyStatus]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, service, state, version, applied, error, plugins, last_seen "
                "FROM proxies ORDER BY service, id"
            ).fetchall()
        return [ProxyStatus(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7])
                for r in rows]

    # instances ---------------------------------------------------------------------
    async def register_instance(self, instance: Instance, ttl: float) -> None:
        now = time.time()
        labels = json.dumps(instance.labels, sort_keys=True)
        with self._tx() as db:
            before = db.execute(
                "SELECT address, labels, identity FROM instances WHERE service = ? AND id = ? "
                "AND expires_at > ?", (instance.service, instance.id, now)).fetchone()
            db.execute(
                "INSERT INTO instances (service, id, address, labels, identity, registered_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(service, id) DO UPDATE "
                "SET address = excluded.address, labels = excluded.labels, identity = "
                "excluded.identity, expires_at = excluded.expires_at, registered_at = CASE "
                "WHEN instances.expires_at > ? THEN instances.registered_at ELSE "
                "excluded.registered_at END",
                (instance.service, instance.id, instance.address, labels, instance.identity,
                 now, now + ttl, now))
        if before != (instance.address, labels, instance.identity):
            self._on_change(instance.service)

    async def deregister_instance(self, service: str, instance_id: str) -> bool:
        with self._tx() as db:
            gone = db.execute("DELETE FROM instances WHERE service = ? AND id = ?",
                              (service, instance_id)).rowcount
        if gone:
            self._on_change(service)
        return bool(gone)

    async def instances(self, service: str) -> list[Instance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT service, id, address, labels, identity, registered_at, expires_at "
                "FROM instances WHERE service = ? AND expires_at > ? ORDER BY id",
                (service, time.time())).fetchall()
        return [Instance(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    async def _sweep(self) -> None:
        """Drop instances past their TTL and wake their services' watchers."""
        while True:
            await asyncio.sleep(EXPIRY_SWEEP)
            try:
                with self._tx() as db:
                    rows = db.execute("DELETE FROM instances WHERE expires_at <= ? "
                                      "RETURNING service", (time.time(),)).fetchall()
            except StoreUnavailable as exc:
                log.warning("cannot drop expired instances: %s", exc)
                continue
            for service in sorted({str(r[0]) for r in rows}):
                self._on_change(service)

    async def ping(self) -> None:
        try:
            with self._lock:
                # A table, not "SELECT 1": that one never reads the file.
                self._db.execute("SELECT 1 FROM heads LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            # ProgrammingError too: a closed connection answers nothing.
            raise StoreUnavailable(f"the store cannot read: {exc}") from exc

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        with self._lock:
            self._db.close()


def _ignore(service: str) -> None:
    """No one is listening before :meth:`SQLiteStore.start`."""
