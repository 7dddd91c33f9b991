"""``sidemesh`` commands as real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import IO

__all__ = ["ProxyProcess"]


class ProxyProcess:
    """A ``sidemesh`` command in a subprocess, its output captured to a file; stopped
    (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.args = [sys.executable, "-m", "sidemesh", *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final = ""

    def __enter__(self) -> ProxyProcess:
        import tempfile

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
        )
        return self

    def wait_http(self, url: str, timeout: float = 20.0, status: int = 200) -> None:
        """Wait until ``url`` answers ``status``; fail with the process output if not."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(url, timeout=1).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{url} not {status} after {timeout}s:\n{self.output}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    @property
    def output(self) -> str:
        if self._log is None or self._log.closed:
            return self._final
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        code = self.stop()
        self._final = self.output
        if exc_type is not None:
            # Shown by pytest under "Captured stdout" when the test fails.
            print(f"--- {' '.join(self.args[2:])} (exit {code}) ---\n{self._final}")
        if self._log is not None:
            self._log.close()
