"""The control plane's store: what it keeps, and the interface both backends implement.

:class:`Store` is what the API uses. Two backends implement it:
:class:`sidemesh.control.sqlite.SQLiteStore`, the embedded default (one file under
``--data``), and :class:`sidemesh.control.etcd.EtcdStore`, shared by any number of
control-plane replicas. In both, every write is one transaction, so a crash mid-write
leaves the last committed version as the head, and every version is kept (rollback
creates a new version with an old version's content, as ``kubectl rollout undo`` does:
versions only ever grow, so proxies never see one go backwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE

__all__ = [
    "ConfigVersion",
    "Instance",
    "OnChange",
    "ProxyStatus",
    "Store",
    "StoreUnavailable",
    "TokenRecord",
    "VersionNotFound",
]

#: Called with a service's name when its head version, one of its tokens or one of its
#: registered instances changed.
OnChange = Callable[[str], None]


class StoreUnavailable(OSError):
    """The store cannot be reached, or could not make a write (nothing of it was kept);
    the message is the backend's own error, e.g. SQLite's ``database or disk is full``
    or etcd's ``etcdserver: no leader``.

    :param full: the disk (or the store's size limit) is full.
    """

    def __init__(self, message: str, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


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


@dataclass(frozen=True)
class Instance:
    """A registered instance of a service (a sidecar's inbound listener).

    :param expires_at: Unix time after which it counts as gone unless heartbeated again
        (its TTL after its last registration).
    """

    service: str
    id: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    identity: str | None = None
    registered_at: float = 0.0
    expires_at: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "labels": dict(self.labels),
                "identity": self.identity, "registered_at": self.registered_at,
                "expires_at": self.expires_at}


class Store(Protocol):
    """What the control API needs from a store."""

    async def start(self, on_change: OnChange) -> None:
        """Begin calling ``on_change`` for every change, this process's own writes and
        (for a shared store) other replicas' alike."""
        ...

    async def put_config(self, service: str, doc: dict[str, Any], author: str
                         ) -> ConfigVersion:
        """Store ``doc`` as the next version; an unchanged doc returns the head as is."""
        ...

    async def get_config(self, service: str, version: int | None = None
                         ) -> ConfigVersion | None:
        ...

    async def history(self, service: str) -> list[ConfigVersion]:
        """Every version, newest first."""
        ...

    async def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        """A new head with ``version``'s content. :raises VersionNotFound:"""
        ...

    async def services(self) -> list[str]:
        ...

    async def trust_domains(self) -> set[str]:
        """The trust domains the services' current configs name (``node.trust_domain``)."""
        ...

    async def authority(self, trust_domain: str) -> CertificateAuthority:
        """The CA of ``trust_domain``, created on first use (one for every replica)."""
        ...

    async def add_token(self, record: TokenRecord) -> None:
        ...

    async def get_token(self, token_id: str) -> TokenRecord | None:
        ...

    async def tokens(self) -> list[TokenRecord]:
        """Every token ever issued (revoked and expired ones too), oldest first."""
        ...

    async def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        """Mark a token revoked (a second revocation keeps the first time); ``None`` when
        there is no such token."""
        ...

    async def record_status(self, status: ProxyStatus,
                            limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        """Record a report (``applied`` ``None`` keeps the one recorded before).

        :raises sidemesh.control.proxy_ids.ProxyIdTaken:
        :raises sidemesh.control.proxy_ids.TooManyProxies: (the rules are there)
        """
        ...

    async def touch_proxy(self, proxy_id: str, service: str,
                          limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        """Mark a proxy as seen now (its watch polls) without changing its state; raises
        as :meth:`record_status` does."""
        ...

    async def proxies(self) -> list[ProxyStatus]:
        ...

    async def register_instance(self, instance: Instance, ttl: float) -> None:
        """Register (or heartbeat) ``instance``: it is listed until ``ttl`` seconds pass
        without another registration (etcd: a lease of that TTL), or it is deregistered.
        A new, changed or removed instance calls ``on_change(instance.service)``."""
        ...

    async def deregister_instance(self, service: str, instance_id: str) -> bool:
        """Remove an instance; whether there was one."""
        ...

    async def instances(self, service: str) -> list[Instance]:
        """The live instances of ``service`` (none expired), by id."""
        ...

    async def ping(self) -> None:
        """Return once the store answered a cheap read from the backend itself (never
        from a cache), for ``GET /healthz``.

        :raises StoreUnavailable: when it cannot.
        """
        ...

    async def close(self) -> None:
        ...
