"""SQLite plumbing for the embedded store: the file opened private, and write
transactions that report SQLite's own error."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sidemesh.control.files import private_file

__all__ = ["StoreUnavailable", "connect", "transaction"]


class StoreUnavailable(OSError):
    """The store cannot be opened, or could not make a write (nothing of it was kept);
    the message is SQLite's own error, e.g. ``database or disk is full``.

    :param full: the disk (or the store's size limit) is full.
    """

    def __init__(self, message: str, full: bool) -> None:
        super().__init__(message)
        self.full = full


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
