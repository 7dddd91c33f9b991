"""``sidemesh control`` and ``sidemesh token``."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from sidemesh.config.build import split_address
from sidemesh.config.registry import PluginRegistry
from sidemesh.control.app import create_app
from sidemesh.control.auth import (
    ADMIN_TOKEN_FILE,
    TOKEN_ID,
    TokenError,
    format_time,
    issue_token,
    load_admin_token,
    token_id,
)
from sidemesh.control.backends import open_store
from sidemesh.control.ca import CertificateAuthorityError
from sidemesh.control.client import ControlClient, ControlError, read_admin_token
from sidemesh.control.files import private_dir
from sidemesh.control.http import ControlState, Hub
from sidemesh.control.routes_proxies import DEFAULT_TRUST_DOMAIN
from sidemesh.control.routes_tokens import token_body
from sidemesh.control.store import StoreUnavailable
from sidemesh.control.tls import is_loopback, server_certificate
from sidemesh.process.loop import setup_logging

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
    return private_dir(Path(path))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", "info") or "info")
    try:
        data = _data_dir(args.data)
        admin_token, token_path, created = load_admin_token(data, args.admin_token_file)
        host, port = split_address(args.listen, "127.0.0.1")
        store = open_store(getattr(args, "store", None), data,
                           getattr(args, "store_prefix", None))
    except (TokenError, OSError, ValueError) as exc:
        print(f"sidemesh control: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"sidemesh control: admin token created in {token_path} (mode 0600)",
              file=sys.stderr)
    state = ControlState(store, PluginRegistry.load(), admin_token, data)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(args, state, host, port, token_path))


async def _serve(args: argparse.Namespace, state: ControlState, host: str, port: int,
                 token_path: Path) -> int:
    """Start the store (an etcd one loads its state and begins watching), then serve
    until SIGTERM/SIGINT."""
    try:
        await state.start()
        ca = await state.authority(DEFAULT_TRUST_DOMAIN)
    except (StoreUnavailable, CertificateAuthorityError) as exc:
        print(f"sidemesh control: {exc}", file=sys.stderr)
        await state.store.close()
        return 2
    if getattr(args, "print_ca", False):
        sys.stdout.write(ca.trust_bundle_pem().decode())
        await state.store.close()
        return 0
    for failure in state.registry.load_errors:
        log.warning("%s", failure)
    use_tls = getattr(args, "tls", False) or not (
        is_loopback(host) or getattr(args, "insecure_http", False)
    )
    tls: dict[str, Any] = {}
    if use_tls:
        sans = [host, *getattr(args, "tls_san", [])]
        cert, key = server_certificate(ca, sans, state.data_dir / "tls")
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    elif not is_loopback(host):
        log.warning("serving plain HTTP on %s (--insecure-http): tokens, configs and trust "
                    "bundles cross the network in clear text", host)
    config = uvicorn.Config(
        create_app(state), host=host, port=port, log_level="warning",
        access_log=False, lifespan="off", timeout_graceful_shutdown=5, **tls,
    )
    server = _Server(config, state.hub)
    scheme = "https" if use_tls else "http"
    log.info("control plane on %s://%s:%s, store %s, data in %s, admin token in %s, "
             "plugins: %s", scheme, host, port, getattr(args, "store", None) or "sqlite",
             state.data_dir, token_path,
             ", ".join(f"{p.name} {p.version}" for p in state.registry.all()) or "none")
    try:
        await server.serve()
    finally:
        await state.store.close()
    return 0 if server.started else 1


async def _local_token(args: argparse.Namespace) -> Any:
    """Issue, revoke or list in the store itself (``--data DIR``'s, or ``--store``'s;
    the control plane may be running: with SQLite its long polls see a revocation when
    they next wake, at the latest their timeout; with etcd at once)."""
    data = _data_dir(args.data)
    store = open_store(getattr(args, "store", None), data, getattr(args, "store_prefix", None))
    try:
        if args.revoke:
            if not TOKEN_ID.match(args.revoke):
                raise TokenError(f"{args.revoke!r} is not a token id (16 hex digits)")
            record = await store.revoke_token(args.revoke, time.time())
            if record is None:
                raise TokenError(f"no token {args.revoke} in the store")
            return token_body(record)
        if args.list:
            now = time.time()
            return {"tokens": [token_body(r, now) for r in await store.tokens()
                               if args.service is None or r.service == args.service]}
        token = await issue_token(store, args.service, args.ttl)
        record = await store.get_token(token_id(token))
        assert record is not None
        return {"id": record.id, "service": record.service, "token": token,
                "created_at": record.created_at, "expires_at": record.expires_at}
    finally:
        await store.close()


def _remote_token(args: argparse.Namespace) -> Any:
    """The same through ``--control URL``'s API, with the admin token."""
    admin = read_admin_token(args.admin_token_file, Path(args.data) / ADMIN_TOKEN_FILE)
    with ControlClient(args.control, admin, getattr(args, "control_ca", None)) as client:
        if args.revoke:
            return client.call("DELETE", f"/v1/tokens/{args.revoke}")
        if args.list:
            params = {"service": args.service} if args.service else {}
            return client.call("GET", "/v1/tokens", params=params)
        body: dict[str, Any] = {"service": args.service}
        if args.ttl is not None:
            body["ttl"] = args.ttl
        return client.call("POST", "/v1/tokens", json=body)


def _print_tokens(tokens: list[dict[str, Any]]) -> None:
    def when(value: float | None) -> str:
        return "-" if value is None else format_time(value)

    print(f"{'ID':16}  {'SERVICE':20}  {'STATE':7}  {'CREATED':20}  {'EXPIRES':20}  REVOKED")
    for t in tokens:
        print(f"{t['id']:16}  {t['service']:20}  {t['state']:7}  {when(t['created_at']):20}  "
              f"{when(t['expires_at']):20}  {when(t['revoked_at'])}")


def main_token(args: argparse.Namespace) -> int:
    try:
        answer = _remote_token(args) if args.control else asyncio.run(_local_token(args))
    except (TokenError, ControlError, OSError, ValueError) as exc:
        print(f"sidemesh token: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.list:
        _print_tokens(answer["tokens"])
    elif args.revoke:
        print(f"revoked token {answer['id']} of service {answer['service']} "
              f"({format_time(answer['revoked_at'])})")
    else:
        # stdout is the token alone (`> web.token`); the id to revoke it by goes aside.
        print(answer["token"])
        expires = answer["expires_at"]
        print(f"sidemesh token: {answer['id']} for service {answer['service']}, "
              f"{'no expiry' if expires is None else 'expires ' + format_time(expires)}; revoke "
              f"with: sidemesh token --revoke {answer['id']}", file=sys.stderr)
    return 0
