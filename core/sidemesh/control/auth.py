"""Who is calling the control API: the admin, or a sidecar bound to one service.

Sidecar tokens look like ``smt.<id>.<secret>``: the id finds the record, and only the
secret's sha256 is stored, compared with :func:`hmac.compare_digest`. The admin token
lives in a file (``DIR/admin.token``, mode 0600, created on first start).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sidemesh.control.store import Store, TokenRecord

__all__ = [
    "ADMIN_TOKEN_FILE",
    "PROXY_ID",
    "PROXY_ID_PATTERN",
    "SERVICE_NAME",
    "SERVICE_PATTERN",
    "Principal",
    "TokenError",
    "authenticate",
    "issue_token",
    "load_admin_token",
]

ADMIN_TOKEN_FILE = "admin.token"
#: The core schema's name pattern: a service name as it appears in URLs and configs.
SERVICE_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$"
SERVICE_NAME = re.compile(SERVICE_PATTERN)
PROXY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
PROXY_ID = re.compile(PROXY_ID_PATTERN)
_PREFIX = "smt"


class TokenError(Exception):
    """The admin token file cannot be read or created, or a service name is invalid."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the admin (``service is None``) or a sidecar."""

    service: str | None

    @property
    def admin(self) -> bool:
        return self.service is None

    @property
    def name(self) -> str:
        return "admin" if self.service is None else f"sidecar:{self.service}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_admin_token(data_dir: Path, token_file: str | None) -> tuple[str, Path, bool]:
    """The admin token, where it is, and whether it was just created.

    :raises TokenError: for an unreadable or empty file.
    """
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise TokenError(f"admin token file {path}: {exc.strerror}") from None
        if not token:
            raise TokenError(f"admin token file {path} is empty")
        return token, path, False
    path = data_dir / ADMIN_TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        # O_EXCL with the final mode: never readable by others, even for a moment, and
        # two control planes starting at once cannot both create it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_admin_token(data_dir, str(path))[0], path, False
    except OSError as exc:
        raise TokenError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, path, True


def issue_token(store: Store, service: str) -> str:
    """Create a sidecar token for ``service`` and return it (shown once, stored hashed).

    :raises TokenError: when ``service`` is not a valid service name.
    """
    if not SERVICE_NAME.match(service):
        raise TokenError(
            f"{service!r} is not a service name: letters, digits, '-', '_' or '.', "
            "at most 64, starting and ending with a letter or digit"
        )
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    store.add_token(TokenRecord(token_id, _sha256(secret), service, time.time()))
    return f"{_PREFIX}.{token_id}.{secret}"


def authenticate(header: str | None, admin_token: str, store: Store) -> Principal | None:
    """The caller named by an ``Authorization: Bearer ...`` header, or ``None``."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if hmac.compare_digest(_sha256(token), _sha256(admin_token)):
        return Principal(None)
    prefix, _, rest = token.partition(".")
    token_id, _, secret = rest.partition(".")
    if prefix != _PREFIX or not token_id or not secret:
        return None
    record = store.get_token(token_id)
    if record is None:
        return None
    if not hmac.compare_digest(_sha256(secret), record.secret_hash):
        return None
    return Principal(record.service)
