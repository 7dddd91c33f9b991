"""A real etcd v3 cluster on loopback for tests: ``etcd`` processes (Debian's
``etcd-server``) on free ports, each with its own data directory.

    with EtcdTestCluster(tmp_path, members=3) as etcd:
        ControlServer(tmp_path / "a", store=etcd.store_url)
        etcd.kill(0)        # SIGKILL one member; the other two keep quorum
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from sidemesh.testing.loop import free_port

__all__ = ["EtcdTestCluster", "etcd_binary"]


def etcd_binary() -> str:
    """The ``etcd`` server binary.

    :raises RuntimeError: when it is not installed (``./dev setup`` installs it).
    """
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd")
                                     else None)
    if found is None:
        raise RuntimeError("etcd is not installed: `./dev setup` installs it "
                           "(apt-get install -y etcd-server)")
    return found


_START_ATTEMPTS = 3


class _PortTaken(RuntimeError):
    """A member could not bind its port: another process took it after it was picked."""


class EtcdTestCluster:
    """``members`` etcd processes forming one cluster; every one is stopped on exit."""

    def __init__(self, directory: Path, members: int = 3, start_timeout: float = 30.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.count = members
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.client_ports = [free_port() for _ in range(self.count)]
        self.peer_ports = [free_port() for _ in range(self.count)]
        self.token = f"sidemesh-test-{os.getpid()}-{time.monotonic_ns()}"

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.client_ports]

    @property
    def store_url(self) -> str:
        """``--store`` for a control plane using every member."""
        return "etcd://" + ",".join(self.endpoints)

    def _name(self, index: int) -> str:
        return f"m{index}"

    def _command(self, index: int) -> list[str]:
        cluster = ",".join(f"{self._name(i)}=http://127.0.0.1:{p}"
                           for i, p in enumerate(self.peer_ports))
        client = f"http://127.0.0.1:{self.client_ports[index]}"
        peer = f"http://127.0.0.1:{self.peer_ports[index]}"
        return [
            etcd_binary(), "--name", self._name(index),
            "--data-dir", str(self.directory / self._name(index)),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            # Loopback: elections in a few hundred milliseconds, not seconds.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--log-level", "warn", "--logger", "zap", *self.extra_args,
        ]

    def start(self, index: int) -> None:
        """Start (or restart, on its data directory) member ``index``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / f"{self._name(index)}.log"
        with open(log, "ab") as out:
            self._procs[index] = subprocess.Popen(self._command(index), stdout=out,
                                                  stderr=subprocess.STDOUT)

    def healthy(self, index: int) -> bool:
        url = f"http://127.0.0.1:{self.client_ports[index]}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return b'"true"' in answer.read()
        except OSError:
            return False

    def wait_healthy(self, indexes: list[int] | None = None) -> None:
        wanted = list(range(self.count)) if indexes is None else indexes
        deadline = time.monotonic() + self.start_timeout
        while not all(self.healthy(i) for i in wanted):
            for i in wanted:
                proc = self._procs[i]
                if proc is not None and proc.poll() is not None:
                    error = _PortTaken if "address already in use" in self.log(i) else RuntimeError
                    raise error(f"etcd member {i} exited ({proc.returncode}): "
                                       f"{self.log(i)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {wanted} not healthy after "
                                   f"{self.start_timeout:.0f} s: {self.log(wanted[0])[-2000:]}")
            time.sleep(0.1)

    def log(self, index: int) -> str:
        path = self.directory / f"{self._name(index)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (as a crash or a lost machine would stop it)."""
        proc = self._procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> EtcdTestCluster:
        attempt = 1
        while True:
            try:
                for index in range(self.count):
                    self.start(index)
                self.wait_healthy()
                return self
            except _PortTaken:
                # A free port is only free until someone else binds it: on a busy CI
                # machine another test can take one between free_port() and etcd's bind.
                self.stop()
                if attempt == _START_ATTEMPTS:
                    raise
                attempt += 1
                shutil.rmtree(self.directory, ignore_errors=True)
                self._pick_ports()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            if proc is not None:
                try:
                    # A stopping leader hands over leadership to members that are stopping
                    # too, which can take seconds; a test's data is not worth that wait.
                    proc.wait(1)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()
