"""Every process ``sidemesh demo`` starts, and the guarantee that none outlives it.

Each child gets its own session (so its own process group): a Ctrl-C on the terminal
reaches the demo only, which then stops the children in order, and a child's own
children (uvicorn workers, say) go with its group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

__all__ = ["Child", "DemoError", "Supervisor", "raise_on_sigterm"]


class DemoError(Exception):
    """A reason the demo cannot go on, shown to the user as it is (never a traceback)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C so every ``finally`` runs."""


class _Deferred:
    """A SIGTERM or Ctrl-C arriving while the main thread starts a child waits until the
    child is on the list: raised between Popen and the append, it would leave a process
    nobody stops. (Blocking the signals instead would leave them blocked in the child,
    which then never sees its SIGTERM.)"""

    active = False
    pending: int | None = None


def _interrupt(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def raise_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if _Deferred.active:
            _Deferred.pending = signum
        else:
            _interrupt(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: Being stopped on purpose (a pod scaled down): its exit is no failure.
    stopping: bool = False

    def output(self, tail: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Starts children with their output in ``logs/``; :meth:`stop_all` ends them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.logs / f"{name}.log"
        # Signal handlers run in the main thread; another thread's start is covered by the
        # lock, which stop_all takes.
        main = threading.current_thread() is threading.main_thread()
        with self._lock:
            if self._closed:
                raise DemoError(f"not starting {name}: the demo is stopping")
            _Deferred.active = main
            try:
                with open(log, "wb") as out:
                    proc = subprocess.Popen(
                        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                        cwd=self.workdir, start_new_session=True)
                child = Child(name, proc, log)
                self.children.append(child)
            finally:
                pending, _Deferred.active, _Deferred.pending = _Deferred.pending, False, None
        if pending is not None:
            _interrupt(pending)
        return child

    def run(self, name: str, args: Sequence[str], timeout: float = 30.0) -> str:
        """Run a short command to the end; its stdout, or :class:`DemoError` with its output."""
        try:
            done = subprocess.run([sys.executable, *args], capture_output=True,
                                  timeout=timeout, cwd=self.workdir, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{name}: no answer after {timeout:.0f}s") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise DemoError(f"{name} failed (exit {done.returncode}): {text[-800:]}")
        return done.stdout.decode().strip()

    def stop(self, child: Child, grace: float = 10.0) -> int:
        """SIGTERM to one child, as Kubernetes stops a pod; SIGKILL after ``grace``.
        Its exit code (negative: killed by that signal)."""
        child.stopping = True
        _signal_group(child.proc, signal.SIGTERM)
        try:
            return child.proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(child.proc, signal.SIGKILL)
            return child.proc.wait(5)

    def check_alive(self) -> None:
        for child in list(self.children):
            if not child.alive() and not child.stopping:
                raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n"
                                f"{child.output()}")

    def wait_http(self, child: Child, url: str, timeout: float = 20.0,
                  ok: Sequence[int] = (200,)) -> None:
        """Wait until ``url`` answers one of ``ok``; :class:`DemoError` naming the child."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not child.alive():
                raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n"
                                f"{child.output()}")
            try:
                response = httpx.get(url, timeout=1.0)
                if response.status_code in ok:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise DemoError(f"{child.name} not ready after {timeout:.0f}s ({url}: {last}):\n"
                        f"{child.output()}")

    def wait_until(self, child: Child, ready: Callable[[], bool], what: str,
                   timeout: float = 20.0) -> None:
        """Wait until ``ready()`` (a probe with its own short timeout) is true;
        :class:`DemoError` naming the child and ``what`` was awaited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n"
                                f"{child.output()}")
            if ready():
                return
            time.sleep(0.1)
        raise DemoError(f"{child.name} not ready after {timeout:.0f}s ({what}):\n"
                        f"{child.output()}")

    def output_of(self, name: str) -> str:
        """The last lines of the output of the child called ``name``."""
        return next((c.output() for c in self.children if c.name == name), "")

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM to every child's process group (newest first: sidecars drain before
        the control plane goes), then SIGKILL whatever is left after ``grace``."""
        with self._lock:
            self._closed = True
        for child in reversed(self.children):
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        for child in self.children:
            # The group too: a child's own children must not outlive the demo.
            _signal_group(child.proc, signal.SIGKILL)
            if child.proc.poll() is None:
                child.proc.wait(5)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
