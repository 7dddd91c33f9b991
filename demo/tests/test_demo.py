"""`sidemesh demo` end to end: it runs the whole mesh, reports what the sidecars measured,
exits 0, and leaves no process behind (also when stopped with SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(200)

REPO = Path(__file__).resolve().parents[2]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
    return found


def _descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    children: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - children
        children |= frontier
    return children


def _demo(args: list[str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sidemesh", "demo", *(args or [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class _Watcher(threading.Thread):
    """Records every descendant of a process while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.seen: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            table = _processes()
            for pid in _descendants(self.pid, table):
                self.seen.setdefault(pid, table[pid][2])
            self.done.wait(0.2)


def _survivors(seen: dict[int, str]) -> list[str]:
    """Processes seen under the demo that still run the same command (not a reused pid)."""
    alive = _processes()
    return [f"{pid}: {cmd}" for pid, cmd in seen.items()
            if pid in alive and alive[pid][2] == cmd]


def test_demo_runs_the_mesh_reports_and_cleans_up() -> None:
    proc = _demo()
    watcher = _Watcher(proc.pid)
    watcher.start()
    try:
        output, _ = proc.communicate(timeout=150)
    finally:
        watcher.done.set()
        watcher.join(5)
        _stop(proc)
    assert proc.returncode == 0, output
    # The observed split, from the sidecar's split counters, next to the configured one.
    assert re.search(r"reviews/v1\s*│\s*90\.0%\s*│\s*\d+\.\d%", output), output
    assert re.search(r"reviews/v2\s*│\s*10\.0%\s*│\s*\d+\.\d%", output), output
    saved = re.search(r"(\d+) requests saved by a retry", output)
    assert saved and int(saved.group(1)) > 0, output
    ejected = r"reviews-v1-a \(127\.[\d.]+:\d+\) ejected at t=[\d.]+s \(ejection #\d+, ~\d+s\)"
    assert re.search(ejected + r", back at t=", output), output
    assert "spiffe://cluster.local/ns/default/sa/productpage on" in output, output
    assert "presents spiffe://cluster.local/ns/default/sa/reviews" in output, output
    # Discovery: a pod added and one stopped while traffic flows, and no request lost.
    added = re.search(r"reviews-v1-c \(127\.[\d.]+:\d+\) registered, added at t=[\d.]+s, "
                      r"answered (\d+) requests", output)
    assert added and int(added.group(1)) > 0, output
    assert re.search(r"reviews-v1-c SIGTERM at t=[\d.]+s: deregistered, removed at t=[\d.]+s, "
                     r"drained, exited 0 at t=[\d.]+s", output), output
    scaled = re.search(r"while reviews scaled 3 → 4 → 3: (\d+) of (\d+) requests failed", output)
    assert scaled and scaled.group(1) == "0" and int(scaled.group(2)) > 0, output
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", output), output
    assert re.search(r"trace [0-9a-f]{32} \(\d+ spans\)", output), output
    # One gRPC call productpage → ratings, HTTP/2 on both hops, as each sidecar logged it,
    # and its spans in the trace tree with the gRPC status the sidecars read.
    assert "/bookinfo.Ratings/Get (unary), called once by productpage" in output, output
    assert re.search(r"productpage's sidecar logged HTTP/2 \(h2c from productpage\), "
                     r"grpc_status 0, HTTP 200", output), output
    assert re.search(r"ratings-v1's sidecar logged HTTP/2 \(over mTLS\), grpc_status 0, "
                     r"HTTP 200", output), output
    assert "client verified: spiffe://cluster.local/ns/default/sa/productpage;" in output, output
    for span in ("productpage server post ratings", "productpage client post ratings",
                 "ratings server post local"):
        assert re.search(re.escape(span) + r"\s+\+[\d.]+ms [\d.]+ms\s+200\s+grpc-status 0",
                         output), (span, output)
    workdir = re.search(r"(/\S*sidemesh-demo-\w+)", output)
    assert workdir is None or not Path(workdir.group(1)).exists()
    started = set(watcher.seen.values())
    for kind in ("sidemesh control", "sidemesh proxy", "sidemesh_demo.app reviews",
                 "sidemesh_demo.app productpage", "sidemesh_demo.ratings"):
        assert any(kind in cmd for cmd in started), (kind, started)
    assert not _survivors(watcher.seen), output


def test_demo_stopped_by_sigterm_leaves_no_process() -> None:
    proc = _demo(["--keep-running"])
    watcher = _Watcher(proc.pid)
    watcher.start()
    try:
        # Mid-start: the control plane and some apps and sidecars are up.
        deadline = time.monotonic() + 60
        while len(watcher.seen) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert watcher.seen, "the demo started no process"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        watcher.done.set()
        watcher.join(5)
        _stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output, output
    assert not _survivors(watcher.seen), output
