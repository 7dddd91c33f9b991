"""Processes the harness starts: pinned, logged, waited for, and always stopped.

Every process runs in its own session so that stopping it kills its whole group
(nginx's workers included) and a Ctrl-C in the terminal reaches only the harness,
which then stops everything itself in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BenchError",
    "ManagedProcess",
    "cpu_prefix",
    "descendants",
    "free_port",
    "peak_rss_kib",
    "wait_for_port",
]

STOP_GRACE = 5.0


class BenchError(Exception):
    """A step of the benchmark failed; the message is meant for the user."""


def cpu_prefix(cpu: int | None) -> list[str]:
    """``taskset -c N`` when pinning is possible, else nothing (the process runs unpinned)."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    if cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            pending.extend(int(child) for child in children)
    return found


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def peak_rss_kib(pid: int) -> int | None:
    """The largest peak RSS (VmHWM) among ``pid`` and its descendants.

    The largest rather than the sum: for nginx the worker holds the data path and the
    master is idle, so the worker's figure is the one comparable to a one-process proxy.
    """
    peaks = [peak for p in descendants(pid) if (peak := _vm_hwm_kib(p)) is not None]
    return max(peaks) if peaks else None


def wait_for_port(
    host: str, port: int, timeout: float, process: ManagedProcess | None = None
) -> None:
    """Wait until something accepts TCP connections on ``host:port``.

    Gives up early when ``process`` exits, with the tail of its log as the reason.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.exited():
            raise BenchError(f"{process.name} exited with code {process.returncode()}: "
                             f"{process.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            detail = f" ({process.log_tail()})" if process is not None else ""
            raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f}s{detail}")
        time.sleep(0.05)


class ManagedProcess:
    """A subprocess with its output in a log file, stopped (group-wide) by :meth:`stop`."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, cpu: int | None = None
    ) -> None:
        self.name = name
        self.argv = [*cpu_prefix(cpu), *argv]
        self.pinned = bool(cpu_prefix(cpu))
        self.log_path = log_dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        with self.log_path.open("wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"{self.name} was never started")
        return self._proc.pid

    def exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return "no log"
        tail = text.splitlines()[-lines:]
        return "; ".join(tail) if tail else "no output"

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after a grace period; idempotent."""
        proc = self._proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers that outlived their leader still belong to the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._proc = None
