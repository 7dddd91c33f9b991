"""The process-wide identity of a sidecar, shared by every mtls policy instance.

One :class:`IdentityManager` exists per certificate source (per set of files, or per
control plane and service); policies of every route and every config generation share
it, so a config reload neither re-reads certificates nor asks the CA again.

Rotation never drops traffic: a new :class:`~sidemesh_mtls.identity.Identity` is built
aside and swapped in with one assignment. New upstream connections take the current
client context when they are made; the listener keeps one stable server context whose
``sni_callback`` moves every incoming handshake onto the current identity's context, so
the listener itself never has to be re-bound. Established connections are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Mapping
from typing import Any

from sidemesh import ControlPlane

from .identity import (
    MIN_TLS_VERSION,
    SERVER_ALPN,
    Identity,
    IdentityError,
    IdentityUnavailable,
    build_identity,
)
from .sources import CAIdentitySource, FileIdentitySource, FileStamp

__all__ = ["IdentityManager", "manager_for", "release"]

log = logging.getLogger("sidemesh.mtls")

#: how often certificate files are checked for changes (at most).
FILE_CHECK_INTERVAL = 2.0
#: retry back-off towards an unreachable control plane.
RETRY_BASE = 0.5
RETRY_MAX = 30.0

Source = FileIdentitySource | CAIdentitySource


class IdentityManager:
    """Holds the current identity of one source and keeps it fresh.

    :param source: where certificates come from.
    :param trust_domain: the sidecar's trust domain; certificates outside it are refused.
    :param check_interval: files only: how often (seconds) to look for changed files.
    """

    def __init__(
        self,
        source: Source,
        trust_domain: str,
        *,
        check_interval: float = FILE_CHECK_INTERVAL,
    ) -> None:
        self.source = source
        self.trust_domain = trust_domain
        self.check_interval = check_interval
        self.users = 0
        self.last_error: str | None = None
        self.rotations = 0
        self._identity: Identity | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener_context: ssl.SSLContext | None = None
        self._stamp: FileStamp | None = None
        self._checked = 0.0
        if isinstance(source, FileIdentitySource):
            # Bad files are a config error: fail now, while the config is being applied.
            self._stamp = source.stamp()
            self.set_identity(build_identity(source.load(), trust_domain))
            self._checked = time.monotonic()

    # ---------------------------------------------------------------- the identity

    def current(self) -> Identity | None:
        """The identity to use for a new connection (``None`` before the first one)."""
        if isinstance(self.source, FileIdentitySource):
            now = time.monotonic()
            if now - self._checked >= self.check_interval:
                self._checked = now
                self._reload_files(self.source)
        return self._identity

    def require(self) -> Identity:
        """:meth:`current`, or :class:`IdentityUnavailable` naming the reason."""
        identity = self.current()
        if identity is None:
            reason = f": {self.last_error}" if self.last_error else ""
            raise IdentityUnavailable(
                f"mtls: no workload certificate yet from {self.source.description}{reason}"
            )
        return identity

    def set_identity(self, identity: Identity) -> None:
        """Swap in a new identity; new connections use it from now on."""
        previous = self._identity
        self._identity = identity
        self._ready.set()
        if previous is not None:
            self.rotations += 1
        log.info(
            "mtls identity %s (serial %x, valid until %s) from %s",
            identity.spiffe_id,
            identity.serial,
            identity.not_after.isoformat(),
            identity.source,
        )

    async def wait_ready(self) -> Identity:
        """Wait for the first identity (bound it with ``asyncio.timeout``; then
        :meth:`require` says why none came)."""
        self.start()
        await self._ready.wait()
        return self.require()

    def _reload_files(self, source: FileIdentitySource) -> None:
        stamp = source.stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            identity = build_identity(source.load(), self.trust_domain)
        except IdentityError as exc:
            # Files are often replaced one at a time: keep the current identity and try
            # again at the next check, when the set may be consistent again.
            if str(exc) != self.last_error:
                log.warning("mtls: keeping the current certificate: %s", exc)
            self.last_error = str(exc)
            return
        self._stamp = stamp
        self.last_error = None
        self.set_identity(identity)

    # ---------------------------------------------------------------- listener context

    def listener_context(self) -> ssl.SSLContext:
        """The server context a listener is started with; the same object for the whole
        life of the manager (the core keeps a listener whose context did not change)."""
        if self._listener_context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = MIN_TLS_VERSION
            context.verify_mode = ssl.CERT_REQUIRED
            context.sni_callback = self._select_server_context
            # Set here too: OpenSSL may read ALPN from either context.
            context.set_alpn_protocols(list(SERVER_ALPN))
            self._listener_context = context
        return self._listener_context

    def _select_server_context(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        identity = self.current()
        if identity is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        sslobj.context = identity.server_context
        return None

    # ---------------------------------------------------------------- CA rotation

    def start(self) -> None:
        """Start fetching and rotating certificates from the CA (no-op for files, when
        already started, or outside an event loop)."""
        if not isinstance(self.source, CAIdentitySource) or self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._rotate(self.source), name="sidemesh-mtls-rotation")

    async def _rotate(self, source: CAIdentitySource) -> None:
        # Not at the top: with certificates from files this process never loads httpx.
        import httpx

        failures = 0
        while True:
            try:
                identity = build_identity(await source.fetch(), self.trust_domain)
            except (IdentityError, httpx.HTTPError, OSError) as exc:
                failures += 1
                self.last_error = str(exc) or type(exc).__name__
                log.warning("mtls: certificate request failed (%d): %s", failures, exc)
                # Full jitter, as the control-plane reconnects elsewhere in sidemesh.
                cap = min(RETRY_MAX, RETRY_BASE * 2**failures)
                await asyncio.sleep(random.uniform(RETRY_BASE, cap))
                continue
            failures = 0
            self.last_error = None
            self.set_identity(identity)
            remaining = identity.not_after.timestamp() - time.time()
            # Renew at half of the remaining lifetime (Istio renews at 50%).
            await asyncio.sleep(max(1.0, remaining / 2))

    async def stop(self) -> None:
        """Stop the rotation task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


_MANAGERS: dict[tuple[str, ...], IdentityManager] = {}


def manager_for(
    config: Mapping[str, Any], node: Mapping[str, Any], control: ControlPlane | None
) -> IdentityManager:
    """The process-wide manager for a policy's config, created on first use; counts one
    more user (give it back with :func:`release`).

    Files (``cert_file``/``key_file``/``bundle_file``) win; otherwise the CA of the
    control plane the sidecar runs under (``PolicyContext.control``, any of its
    replicas), authenticated with the sidecar's token.

    :raises IdentityError: when neither is configured or the files are unusable.
    """
    trust_domain = str(node.get("trust_domain") or "cluster.local")
    key: tuple[str, ...]
    source: Source
    if config.get("cert_file"):
        files = (str(config["cert_file"]), str(config["key_file"]), str(config["bundle_file"]))
        key = ("file", trust_domain, *files)
        source = FileIdentitySource(*files)
    else:
        if control is None:
            raise IdentityError(
                "mtls needs certificates: set cert_file, key_file and bundle_file, or run "
                "the sidecar with a control plane (sidemesh proxy --control URL, or the "
                "config's `control` section)"
            )
        service = str(node.get("service") or "")
        namespace = str(node.get("namespace") or "default")
        # Keyed by every replica: moving to another one keeps the same manager.
        key = ("ca", trust_domain, *control.urls, service, namespace)
        source = CAIdentitySource(control, service=service, namespace=namespace)
    manager = _MANAGERS.get(key)
    if manager is None:
        manager = _MANAGERS[key] = IdentityManager(source, trust_domain)
    manager.users += 1
    manager.start()
    return manager


async def release(manager: IdentityManager) -> None:
    """Drop one user of ``manager``; the last one stops it and forgets it."""
    manager.users -= 1
    if manager.users > 0:
        return
    for key, known in list(_MANAGERS.items()):
        if known is manager:
            del _MANAGERS[key]
    await manager.stop()
