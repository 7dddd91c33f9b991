"""A real control plane for tests: the Starlette app on uvicorn, on a background loop,
with its store in a directory the test owns; and its certificate authority, for tests
that need real SPIFFE certificates without a server.

    with ControlServer(tmp_path) as cp:
        httpx.put(cp.url + "/v1/services/web/config", json=doc, headers=cp.admin)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from sidemesh.config.registry import PluginRegistry
from sidemesh.control.app import create_app
from sidemesh.control.auth import issue_token
from sidemesh.control.backends import open_store
from sidemesh.control.ca import CA_KEY_FILE, CertificateAuthority, CertificateRequestError
from sidemesh.control.http import ControlState
from sidemesh.control.store import Store
from sidemesh.testing.certs import svid_files
from sidemesh.testing.loop import BackgroundLoop

__all__ = [
    "CA_KEY_FILE", "CertificateAuthority", "CertificateRequestError", "ControlServer",
    "svid_files",
]  # fmt: skip

T = TypeVar("T")


class ControlServer:
    """``sidemesh control`` in-process on 127.0.0.1 (a free port); stopped on exit.

    :param store: as ``--store``: ``None`` (SQLite in ``data_dir``) or ``etcd://...``.
    """

    def __init__(
        self,
        data_dir: Path,
        registry: PluginRegistry | None = None,
        admin_token: str = "test-admin-token",
        store: str | None = None,
        store_prefix: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.admin_token = admin_token
        self.store_spec = store
        self.store_prefix = store_prefix
        self.url = ""
        self._bg: BackgroundLoop | None = None
        self._server: uvicorn.Server | None = None
        self._task: Any = None
        self.state: ControlState | None = None

    @property
    def admin(self) -> dict[str, str]:
        """Headers carrying the admin token."""
        return {"authorization": f"Bearer {self.admin_token}"}

    @property
    def store(self) -> Store:
        """The store itself (a :class:`~sidemesh.control.sqlite.SQLiteStore` by default);
        calls made through it are not in the control plane's metrics."""
        assert self.state is not None
        return self.state.backend

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a store call, say) on the control plane's loop."""
        assert self._bg is not None
        return self._bg.run(coro)

    def token(self, service: str) -> str:
        return self.call(issue_token(self.store, service))

    def headers(self, service: str) -> dict[str, str]:
        """Headers carrying a new sidecar token of ``service``."""
        return {"authorization": f"Bearer {self.token(service)}"}

    def __enter__(self) -> ControlServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(self.store_spec, self.data_dir, self.store_prefix)
        self.state = ControlState(
            store, self.registry or PluginRegistry.load(), self.admin_token, self.data_dir
        )
        state = self.state
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._sock = sock
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(self.state), log_level="warning", lifespan="off", access_log=False
            )
        )
        self._bg = BackgroundLoop()
        server = self._server

        async def start() -> Any:
            await state.start()
            return asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))

        try:
            self._task = self._bg.run(start())
        except BaseException:
            self._bg.run(state.store.close(), timeout=10)
            self._bg.close()
            sock.close()
            raise
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.__exit__()
            raise RuntimeError("the test control plane did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._bg is not None and self._server is not None and self.state is not None
        state, server, task = self.state, self._server, self._task

        async def stop() -> None:
            state.hub.close()
            server.should_exit = True
            async with asyncio.timeout(10):
                await task

        try:
            self._bg.run(stop(), timeout=15)
        finally:
            try:
                self._bg.run(state.store.close(), timeout=10)
            finally:
                self._bg.close()
                self._sock.close()
