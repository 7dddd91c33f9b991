"""Event loops in background threads, small waits, and a forked child, for tests."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["BackgroundLoop", "free_port", "in_forked_child", "raw_exchange", "wait_for"]

T = TypeVar("T")


class BackgroundLoop:
    """An event loop in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        # The loop the proxy runs on in production: uvloop when installed.
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def raw_exchange(port: int, data: bytes, timeout: float = 3.0, half_close: bool = True) -> bytes:
    """Send exact bytes to 127.0.0.1:``port``, half-close (unless not ``half_close``:
    the connection stays as a kept-alive client leaves it), and return everything that
    comes back until the peer closes (or ``timeout`` passes without data)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for configs that must name one).

    It is drawn below the kernel's ephemeral range: a port from that range can be
    given to any outgoing connection before the process it was picked for binds it.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(_UNPRIVILEGED_LOW, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_UNPRIVILEGED_LOW = 10000


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _UNPRIVILEGED_LOW + 1000)


def in_forked_child(make: Callable[[], str], timeout: float = 10.0) -> str:
    """What ``make()`` returns in a forked child of this process (as a worker of
    ``--concurrency N`` is): for state that must not be shared across a fork."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer to the parent, then it exits at once
        try:
            os.write(write_end, make().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        assert ready, f"the forked child wrote nothing within {timeout:g} s"
        return os.read(read_end, 1 << 16).decode()
    finally:
        os.close(read_end)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # still running: it must not outlive us
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
