"""``sidemesh control`` and ``sidemesh token``."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from sidemesh.config.build import split_address
from sidemesh.config.registry import PluginRegistry
from sidemesh.control.app import create_app
from sidemesh.control.auth import TokenError, issue_token, load_admin_token
from sidemesh.control.http import ControlState, Hub
from sidemesh.control.store import DB_FILE, SQLiteStore
from sidemesh.process.runtime import setup_logging

__all__ = ["main", "main_token"]

log = logging.getLogger("sidemesh.control")


class _Server(uvicorn.Server):
    """uvicorn that also ends pending long polls on SIGTERM, so shutdown is prompt."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.loop is not None:
            # Runs in a signal handler: only the thread-safe call may touch the loop.
            self.loop.call_soon_threadsafe(self.hub.close)
        super().handle_exit(sig, frame)


def _data_dir(path: str) -> Path:
    data = Path(path)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    return data


def main(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", "info") or "info")
    try:
        data = _data_dir(args.data)
        admin_token, token_path, created = load_admin_token(data, args.admin_token_file)
        host, port = split_address(args.listen, "127.0.0.1")
    except (TokenError, OSError, ValueError) as exc:
        print(f"sidemesh control: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"sidemesh control: admin token created in {token_path} (mode 0600)",
              file=sys.stderr)
    store = SQLiteStore(data / DB_FILE)
    state = ControlState(store, PluginRegistry.load(), admin_token, data)
    for failure in state.registry.load_errors:
        log.warning("%s", failure)
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    config = uvicorn.Config(
        create_app(state), host=host, port=port, loop=loop, log_level="warning",
        access_log=False, lifespan="off", timeout_graceful_shutdown=5,
    )
    server = _Server(config, state.hub)
    log.info("control plane on http://%s:%s, data in %s, admin token in %s, plugins: %s",
             host, port, data, token_path,
             ", ".join(f"{p.name} {p.version}" for p in state.registry.all()) or "none")
    try:
        server.run()
    finally:
        store.close()
    return 0 if server.started else 1


def main_token(args: argparse.Namespace) -> int:
    try:
        data = _data_dir(args.data)
        store = SQLiteStore(data / DB_FILE)
    except OSError as exc:
        print(f"sidemesh token: {exc}", file=sys.stderr)
        return 2
    try:
        print(issue_token(store, args.service))
    except TokenError as exc:
        print(f"sidemesh token: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0
