"""Who is calling the control API: the admin, or a sidecar bound to one service.

Sidecar tokens look like ``smt.<id>.<secret>``: the id finds the record, and only the
secret's sha256 is stored, compared with :func:`hmac.compare_digest`. A token may expire
(``ttl``) and may be revoked by its id; either way it is refused from then on. The admin
token lives in a file (``DIR/admin.token``, mode 0600, created on first start).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sidemesh.control.store import Store, TokenRecord

__all__ = [
    "ADMIN_TOKEN_FILE",
    "PROXY_ID",
    "PROXY_ID_PATTERN",
    "SERVICE_NAME",
    "SERVICE_PATTERN",
    "TOKEN_ID",
    "TOKEN_ID_PATTERN",
    "Principal",
    "TokenError",
    "TokenRefused",
    "authenticate",
    "format_time",
    "issue_token",
    "load_admin_token",
    "token_id",
    "token_state",
]

ADMIN_TOKEN_FILE = "admin.token"
#: The core schema's name pattern: a service name as it appears in URLs and configs.
SERVICE_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$"
SERVICE_NAME = re.compile(SERVICE_PATTERN)
PROXY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
PROXY_ID = re.compile(PROXY_ID_PATTERN)
TOKEN_ID_PATTERN = r"^[0-9a-f]{16}$"
TOKEN_ID = re.compile(TOKEN_ID_PATTERN)
_PREFIX = "smt"


class TokenError(Exception):
    """The admin token file cannot be read or created, or a service name or lifetime is
    invalid."""


class TokenRefused(Exception):
    """A genuine sidecar token (its secret matched) that has expired or was revoked; the
    message says which and when, and is the ``401`` answer's error."""


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


def format_time(when: float) -> str:
    """Unix time as UTC ISO 8601 to the second, as error messages and listings show it."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def issue_token(store: Store, service: str, ttl: float | None = None) -> str:
    """Create a sidecar token for ``service`` and return it (shown once, stored hashed).

    :param ttl: seconds until it expires; ``None``: it never does (until revoked).
    :raises TokenError: when ``service`` is not a valid service name or ``ttl`` is not a
        positive number of seconds.
    """
    if not SERVICE_NAME.match(service):
        raise TokenError(
            f"{service!r} is not a service name: letters, digits, '-', '_' or '.', "
            "at most 64, starting and ending with a letter or digit"
        )
    if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
        raise TokenError(f"a token's ttl must be a positive duration, not {ttl:g}s")
    new_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    created = time.time()
    await store.add_token(TokenRecord(new_id, _sha256(secret), service, created,
                                None if ttl is None else created + ttl))
    return f"{_PREFIX}.{new_id}.{secret}"


def token_id(token: str) -> str:
    """The id of a sidecar token (what revocation and listings name it by).

    :raises TokenError: when ``token`` is not a sidecar token.
    """
    prefix, _, rest = token.strip().partition(".")
    found, _, secret = rest.partition(".")
    if prefix != _PREFIX or not TOKEN_ID.match(found) or not secret:
        raise TokenError("not a sidecar token (smt.<id>.<secret>)")
    return found


def token_state(record: TokenRecord, now: float | None = None) -> str:
    """``revoked``, ``expired`` or ``active``."""
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= (
            time.time() if now is None else now):
        return "expired"
    return "active"


async def authenticate(
    header: str | None, admin_token: str, store: Store, now: float | None = None
) -> Principal | None:
    """The caller named by an ``Authorization: Bearer ...`` header, or ``None``.

    :raises TokenRefused: for a sidecar token that has expired or was revoked (told only
        to a caller holding its secret: anyone else learns nothing about it).
    """
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if hmac.compare_digest(_sha256(token), _sha256(admin_token)):
        return Principal(None)
    prefix, _, rest = token.partition(".")
    found, _, secret = rest.partition(".")
    if prefix != _PREFIX or not found or not secret:
        return None
    record = await store.get_token(found)
    if record is None:
        return None
    if not hmac.compare_digest(_sha256(secret), record.secret_hash):
        return None
    if record.revoked_at is not None:
        raise TokenRefused(f"token {record.id} of service {record.service!r} was revoked "
                           f"at {format_time(record.revoked_at)}")
    if record.expires_at is not None and record.expires_at <= (
            time.time() if now is None else now):
        raise TokenRefused(f"token {record.id} of service {record.service!r} expired at "
                           f"{format_time(record.expires_at)}: issue a new one")
    return Principal(record.service)
