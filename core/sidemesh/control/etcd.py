"""The etcd v3 store: any number of control-plane replicas share one etcd cluster
(``sidemesh control --store etcd://host:port,host:port,...``).

Everything a replica knows is in etcd, under a key prefix (``--store-prefix``, default
``/sidemesh``)::

    PREFIX/configs/<service>/<version, 12 digits>   a version: doc, digest, author, ...
    PREFIX/heads/<service>                          the service's head version
    PREFIX/tokens/<id>                              a sidecar token (secret as sha256)
    PREFIX/proxy-owner/<proxy id>                   the service a proxy id belongs to
    PREFIX/proxies/<service>/<proxy id>             what that proxy last reported
    PREFIX/ca/<trust domain>                        the CA's key and certificate (PEM)
    PREFIX/instances/<service>/<id>                 a registered instance, on its lease

A new version is written in one transaction that compares the head's mod revision, so
two replicas storing at once cannot both take version N: the loser reads the new head
and tries again, and versions stay strictly increasing. Each replica keeps the heads
and the tokens in memory, loaded at start and then followed with an etcd watch, so a
PUT or a revocation on one replica wakes the long polls of every other one, and the
watchers' wake-ups cost no etcd round trip. A watch cut by a failing member resumes on
another from the next revision, so no change is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aetcd
from aetcd import exceptions as etcd_errors
from aetcd import transactions as tx

from sidemesh.config.validate import config_digest
from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.etcd_client import (
    ATTEMPTS,
    FAILOVER_ERRORS,
    EtcdCluster,
    contended,
    dumps,
)
from sidemesh.control.etcd_instances import EtcdInstances
from sidemesh.control.etcd_proxies import EtcdProxies
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE
from sidemesh.control.store import (
    ConfigVersion,
    Instance,
    OnChange,
    ProxyStatus,
    TokenRecord,
    VersionNotFound,
)

__all__ = ["DEFAULT_PREFIX", "EtcdStore"]

log = logging.getLogger("sidemesh.control")

DEFAULT_PREFIX = "/sidemesh"


def _version(service: str, value: bytes) -> ConfigVersion:
    data = json.loads(value)
    return ConfigVersion(service, data["version"], data["doc"], data["digest"],
                         data["created_at"], data["author"], data["rollback_of"])


def _token(value: bytes) -> TokenRecord:
    return TokenRecord(**json.loads(value))


class EtcdStore:
    """The store of a control plane replica, in etcd."""

    def __init__(self, cluster: EtcdCluster, prefix: str = DEFAULT_PREFIX) -> None:
        self.cluster = cluster
        self.prefix = prefix.rstrip("/")
        self._heads: dict[str, ConfigVersion] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._authorities: dict[str, CertificateAuthority] = {}
        self._proxies = EtcdProxies(cluster, self._key)
        self._instances = EtcdInstances(cluster, self._key)
        self._on_change: OnChange | None = None
        self._watches: list[asyncio.Task[None]] = []
        self._loaded = False

    def _key(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    async def _txn(self, compare: list[Any], success: list[Any]) -> bool:
        return await self.cluster.txn(compare, success)

    # ------------------------------------------------------------------ following

    async def start(self, on_change: OnChange) -> None:
        """Load heads and tokens, then follow them with watches.

        :raises StoreUnavailable: when no etcd member answers.
        """
        self._on_change = on_change
        heads_from = await self._load_heads()
        tokens_from = await self._load_tokens()
        instances_from, _ = await self._instances.load()
        self._loaded = True
        self._watches = [
            asyncio.create_task(self._follow(self._instances.prefix, instances_from,
                                             self._instance_changed)),
            asyncio.create_task(self._follow(self._key("heads", ""), heads_from,
                                             self._head_changed)),
            asyncio.create_task(self._follow(self._key("tokens", ""), tokens_from,
                                             self._token_changed)),
        ]

    async def _load(self) -> None:
        """Heads and tokens for a store used without :meth:`start` (``sidemesh token``)."""
        if not self._loaded:
            await self._load_heads()
            await self._load_tokens()
            self._loaded = True

    async def _load_heads(self) -> int:
        found = await self.cluster.call(lambda c: c.get_prefix(self._key("heads", "")))
        heads: dict[str, ConfigVersion] = {}
        for kv in found:
            service = kv.key.decode().rsplit("/", 1)[1]
            stored = await self._read_version(service, int(kv.value))
            if stored is not None:
                heads[service] = stored
        self._heads = heads
        return int(found.header.revision) + 1

    async def _load_tokens(self) -> int:
        found = await self.cluster.call(lambda c: c.get_prefix(self._key("tokens", "")))
        self._tokens = {r.id: r for r in (_token(kv.value) for kv in found)}
        return int(found.header.revision) + 1

    async def _follow(self, prefix: bytes, revision: int, handle: Any) -> None:
        """Apply every change under ``prefix`` from ``revision`` on, for ever: a watch
        that fails is made again on the next member from the revision after the last
        one applied; one that fell behind a compaction reloads everything."""
        while True:
            client = self.cluster.client
            try:
                watch = await client.watch_prefix(prefix, start_revision=revision)
                try:
                    async for event in watch:
                        # Only once applied: a change whose config could not be read is
                        # watched again from its own revision.
                        await handle(event)
                        revision = int(event.kv.mod_revision) + 1
                finally:
                    # Bounded: aetcd's cancel waits for the stream, which may be gone.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(watch.cancel(), 1.0)
            except asyncio.CancelledError:
                raise
            except etcd_errors.RevisionCompactedError:
                log.warning("etcd compacted past revision %d: reloading %s", revision,
                            prefix.decode())
                revision = await self._reload(prefix)
            except FAILOVER_ERRORS as exc:
                self.cluster.fail_over(client, exc)
                await asyncio.sleep(0.2)
            except Exception:
                log.exception("etcd watch on %s failed; watching again", prefix.decode())
                await asyncio.sleep(1.0)

    async def _reload(self, prefix: bytes) -> int:
        if prefix == self._instances.prefix:
            revision, services = await self._instances.load()
        elif prefix == self._key("heads", ""):
            revision = await self._load_heads()
            services = list(self._heads)
        else:
            revision = await self._load_tokens()
            services = sorted({t.service for t in self._tokens.values()})
        for service in services:
            self._changed(service)
        return revision

    def _changed(self, service: str) -> None:
        if self._on_change is not None:
            self._on_change(service)

    async def _head_changed(self, event: aetcd.rtypes.Event) -> None:
        service = event.kv.key.decode().rsplit("/", 1)[1]
        if event.kind == aetcd.rtypes.EventKind.DELETE:
            self._heads.pop(service, None)
        else:
            version = int(event.kv.value)
            known = self._heads.get(service)
            if known is not None and known.version == version:
                return  # this replica's own write, already applied
            stored = await self._read_version(service, version)
            if stored is None:
                return
            self._heads[service] = stored
        self._changed(service)

    async def _instance_changed(self, event: aetcd.rtypes.Event) -> None:
        service = self._instances.changed(event)
        if service is not None:
            self._changed(service)

    async def _token_changed(self, event: aetcd.rtypes.Event) -> None:
        if event.kind == aetcd.rtypes.EventKind.DELETE:
            token_id = event.kv.key.decode().rsplit("/", 1)[1]
            record = self._tokens.pop(token_id, None)
        else:
            record = _token(event.kv.value)
            if self._tokens.get(record.id) == record:
                return
            self._tokens[record.id] = record
        if record is not None:
            self._changed(record.service)

    async def ping(self) -> None:
        """A linearizable read: it needs a member that is part of a quorum."""
        key = self._key("heads")
        await self.cluster.call(lambda c: c.get(key))

    # ------------------------------------------------------------------ configs

    async def _read_version(self, service: str, version: int) -> ConfigVersion | None:
        key = self._key("configs", service, f"{version:012d}")
        found = await self.cluster.call(lambda c: c.get(key))
        return None if found is None else _version(service, found.value)

    async def _head(self, service: str) -> tuple[ConfigVersion | None, int]:
        """The head as etcd has it now, and its key's mod revision (0: none yet)."""
        key = self._key("heads", service)
        found = await self.cluster.call(lambda c: c.get(key))
        if found is None:
            return None, 0
        return await self._read_version(service, int(found.value)), int(found.mod_revision)

    async def _append(self, service: str, doc: dict[str, Any], author: str,
                      rollback_of: int | None, head: ConfigVersion | None, head_rev: int
                      ) -> ConfigVersion | None:
        """Write the version after ``head``; ``None`` when another replica wrote first."""
        version = (head.version if head else 0) + 1
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        stored = ConfigVersion(service, version, json.loads(text), config_digest(doc),
                               time.time(), author, rollback_of)
        value = dumps({"version": version, "doc": stored.config, "digest": stored.digest,
                        "created_at": stored.created_at, "author": author,
                        "rollback_of": rollback_of})
        head_key = self._key("heads", service)
        written = await self._txn(
            [tx.Mod(head_key) == head_rev],
            [tx.Put(self._key("configs", service, f"{version:012d}"), value),
             tx.Put(head_key, str(version).encode())])
        if not written:
            return None
        self._heads[service] = stored
        self._changed(service)
        return stored

    async def put_config(self, service: str, doc: dict[str, Any], author: str
                         ) -> ConfigVersion:
        digest = config_digest(doc)
        for _ in range(ATTEMPTS):
            head, head_rev = await self._head(service)
            # Also what a retried write finds when its first try did commit.
            if head is not None and head.digest == digest:
                return head
            stored = await self._append(service, doc, author, None, head, head_rev)
            if stored is not None:
                return stored
        raise contended(service)

    async def get_config(self, service: str, version: int | None = None
                         ) -> ConfigVersion | None:
        if version is None:
            await self._load()
            return self._heads.get(service)
        return await self._read_version(service, version)

    async def history(self, service: str) -> list[ConfigVersion]:
        found = await self.cluster.call(
            lambda c: c.get_prefix(self._key("configs", service, ""), sort_order="descend"))
        return [_version(service, kv.value) for kv in found]

    async def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        target = await self._read_version(service, version)
        if target is None:
            raise VersionNotFound(f"service {service!r} has no version {version}")
        for attempt in range(ATTEMPTS):
            head, head_rev = await self._head(service)
            if attempt and head is not None and head.rollback_of == version and (
                    head.digest == target.digest):
                return head  # the previous attempt committed, its answer was lost
            stored = await self._append(service, target.config, author, version, head,
                                        head_rev)
            if stored is not None:
                return stored
        raise contended(service)

    async def services(self) -> list[str]:
        await self._load()
        return sorted(self._heads)

    async def trust_domains(self) -> set[str]:
        await self._load()
        found: set[str] = set()
        for head in self._heads.values():
            node = head.config.get("node")
            if isinstance(node, dict) and isinstance(node.get("trust_domain"), str):
                found.add(node["trust_domain"])
        return found

    async def authority(self, trust_domain: str) -> CertificateAuthority:
        ca = self._authorities.get(trust_domain)
        if ca is not None:
            return ca
        key = self._key("ca", trust_domain)
        found = await self.cluster.call(lambda c: c.get(key))
        if found is None:
            key_pem, cert_pem = CertificateAuthority.new_root(trust_domain)
            value = dumps({"key": key_pem.decode(), "certificate": cert_pem.decode()})
            # The first replica to create it wins; the others use its CA.
            await self._txn([tx.Create(key) == 0], [tx.Put(key, value)])
            found = await self.cluster.call(lambda c: c.get(key))
            assert found is not None
        data = json.loads(found.value)
        ca = CertificateAuthority.from_pem(trust_domain, data["key"].encode(),
                                           data["certificate"].encode(),
                                           f"etcd key {key.decode()}")
        self._authorities[trust_domain] = ca
        return ca

    # ------------------------------------------------------------------ tokens

    async def add_token(self, record: TokenRecord) -> None:
        key = self._key("tokens", record.id)
        if not await self._txn([tx.Create(key) == 0], [tx.Put(key, dumps(record.__dict__))]):
            raise ValueError(f"token id {record.id} is taken")
        self._tokens[record.id] = record

    async def get_token(self, token_id: str) -> TokenRecord | None:
        await self._load()
        record = self._tokens.get(token_id)
        if record is None:
            # Issued on another replica a moment ago, before this one's watch saw it.
            key = self._key("tokens", token_id)
            found = await self.cluster.call(lambda c: c.get(key))
            if found is not None:
                record = self._tokens[token_id] = _token(found.value)
        return record

    async def tokens(self) -> list[TokenRecord]:
        await self._load()
        return sorted(self._tokens.values(), key=lambda r: (r.created_at, r.id))

    async def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        key = self._key("tokens", token_id)
        for _ in range(ATTEMPTS):
            found = await self.cluster.call(lambda c: c.get(key))
            if found is None:
                return None
            record = _token(found.value)
            if record.revoked_at is None:
                record = TokenRecord(**{**record.__dict__, "revoked_at": at})
                if not await self._txn([tx.Mod(key) == int(found.mod_revision)],
                                       [tx.Put(key, dumps(record.__dict__))]):
                    continue
            self._tokens[record.id] = record
            self._changed(record.service)
            return record
        raise contended(token_id)

    # ------------------------------------------------------------------ proxies

    async def record_status(self, status: ProxyStatus,
                            limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        await self._proxies.record_status(status, limit)

    async def touch_proxy(self, proxy_id: str, service: str,
                          limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        await self._proxies.touch(proxy_id, service, limit)

    async def proxies(self) -> list[ProxyStatus]:
        return await self._proxies.all()

    # ------------------------------------------------------------------ instances

    async def register_instance(self, instance: Instance, ttl: float) -> None:
        # The watch calls on_change, on every replica (this one's included).
        await self._instances.register(instance, ttl)

    async def deregister_instance(self, service: str, instance_id: str) -> bool:
        return await self._instances.deregister(service, instance_id)

    async def instances(self, service: str) -> list[Instance]:
        return await self._instances.of(service)

    async def close(self) -> None:
        for task in self._watches:
            task.cancel()
        if self._watches:
            await asyncio.wait(self._watches, timeout=2.0)
        self._watches = []
        await self.cluster.close()


