"""The control plane's Prometheus metrics (``GET /metrics``), and the store wrapper that
times every store call.

Each control plane has its own registry, not prometheus-client's global one: several
control planes in one process (tests) keep their own counts. docs/control-api.md
lists every metric with its Istio equivalent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidemesh.control.ca import CertificateAuthority
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE
from sidemesh.control.store import (
    ConfigVersion,
    Instance,
    OnChange,
    ProxyStatus,
    Store,
    StoreUnavailable,
    TokenRecord,
)

__all__ = ["STORE_BUCKETS", "ControlMetrics", "MeteredStore"]

#: From a SQLite read (well under a millisecond) to an etcd write waiting on a slow disk
#: or a leader election (seconds).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)

_OPERATIONS = ("start", "put_config", "get_config", "history", "rollback", "services",
               "trust_domains", "authority", "add_token", "get_token", "tokens",
               "revoke_token", "record_status", "touch_proxy", "proxies", "ping", "close")
_REFUSALS = ("missing", "invalid", "expired", "revoked")


class ControlMetrics:
    """Every metric of one control plane, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.pushes = Counter(
            "sidemesh_control_pushes", "Watch answers that handed a proxy a new version.",
            ["service"], registry=registry)
        self.watchers = Gauge(
            "sidemesh_control_watchers", "Long polls (watches) waiting right now.",
            ["service"], registry=registry)
        self.config_writes = Counter(
            "sidemesh_control_config_writes",
            "New config versions stored: kind put or rollback (an unchanged PUT is none).",
            ["service", "kind"], registry=registry)
        self.acks = Counter(
            "sidemesh_control_acks", "ACK status reports from proxies.", ["service"],
            registry=registry)
        self.nacks = Counter(
            "sidemesh_control_nacks", "NACK status reports from proxies (a config refused).",
            ["service"], registry=registry)
        self.certificates_issued = Counter(
            "sidemesh_control_certificates_issued", "Certificates (X.509-SVIDs) signed.",
            ["trust_domain"], registry=registry)
        self.certificate_errors = Counter(
            "sidemesh_control_certificate_errors",
            "Certificate requests refused (an invalid CSR) or failed (the CA unavailable).",
            registry=registry)
        self.store_seconds = Histogram(
            "sidemesh_control_store_seconds", "Latency of store calls, by method.",
            ["operation"], buckets=STORE_BUCKETS, registry=registry)
        self.store_errors = Counter(
            "sidemesh_control_store_errors",
            "Store calls that failed with the store unavailable (answered 503 or 507).",
            ["operation"], registry=registry)
        self.tokens_refused = Counter(
            "sidemesh_control_tokens_refused",
            "Requests refused 401: no token (missing), an unknown one (invalid), an "
            "expired or a revoked sidecar token.", ["reason"], registry=registry)
        # Present at 0 from the start, so that rate() and alerts see the first one.
        for operation in _OPERATIONS:
            self.store_errors.labels(operation)
        for reason in _REFUSALS:
            self.tokens_refused.labels(reason)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class MeteredStore:
    """``backend`` with every call timed in ``sidemesh_control_store_seconds`` and every
    :class:`StoreUnavailable` counted in ``sidemesh_control_store_errors``."""

    def __init__(self, backend: Store, metrics: ControlMetrics) -> None:
        self.backend = backend
        self._seconds = metrics.store_seconds
        self._errors = metrics.store_errors

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except StoreUnavailable:
            self._errors.labels(operation).inc()
            raise
        finally:
            self._seconds.labels(operation).observe(time.perf_counter() - start)

    async def start(self, on_change: OnChange) -> None:
        with self._timed("start"):
            await self.backend.start(on_change)

    async def put_config(self, service: str, doc: dict[str, Any], author: str
                         ) -> ConfigVersion:
        with self._timed("put_config"):
            return await self.backend.put_config(service, doc, author)

    async def get_config(self, service: str, version: int | None = None
                         ) -> ConfigVersion | None:
        with self._timed("get_config"):
            return await self.backend.get_config(service, version)

    async def history(self, service: str) -> list[ConfigVersion]:
        with self._timed("history"):
            return await self.backend.history(service)

    async def rollback(self, service: str, version: int, author: str) -> ConfigVersion:
        with self._timed("rollback"):
            return await self.backend.rollback(service, version, author)

    async def services(self) -> list[str]:
        with self._timed("services"):
            return await self.backend.services()

    async def trust_domains(self) -> set[str]:
        with self._timed("trust_domains"):
            return await self.backend.trust_domains()

    async def authority(self, trust_domain: str) -> CertificateAuthority:
        with self._timed("authority"):
            return await self.backend.authority(trust_domain)

    async def add_token(self, record: TokenRecord) -> None:
        with self._timed("add_token"):
            await self.backend.add_token(record)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        with self._timed("get_token"):
            return await self.backend.get_token(token_id)

    async def tokens(self) -> list[TokenRecord]:
        with self._timed("tokens"):
            return await self.backend.tokens()

    async def revoke_token(self, token_id: str, at: float) -> TokenRecord | None:
        with self._timed("revoke_token"):
            return await self.backend.revoke_token(token_id, at)

    async def record_status(self, status: ProxyStatus,
                            limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        with self._timed("record_status"):
            await self.backend.record_status(status, limit)

    async def touch_proxy(self, proxy_id: str, service: str,
                          limit: int = MAX_PROXIES_PER_SERVICE) -> None:
        with self._timed("touch_proxy"):
            await self.backend.touch_proxy(proxy_id, service, limit)

    async def proxies(self) -> list[ProxyStatus]:
        with self._timed("proxies"):
            return await self.backend.proxies()

    async def register_instance(self, instance: Instance, ttl: float) -> None:
        with self._timed("register_instance"):
            await self.backend.register_instance(instance, ttl)

    async def deregister_instance(self, service: str, instance_id: str) -> bool:
        with self._timed("deregister_instance"):
            return await self.backend.deregister_instance(service, instance_id)

    async def instances(self, service: str) -> list[Instance]:
        with self._timed("instances"):
            return await self.backend.instances(service)

    async def ping(self) -> None:
        with self._timed("ping"):
            await self.backend.ping()

    async def close(self) -> None:
        with self._timed("close"):
            await self.backend.close()
