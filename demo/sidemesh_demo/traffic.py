"""Traffic for the demo: a few concurrent clients with a live progress display, and a
watcher that samples productpage's sidecar ``/clusters`` to see ejections happen."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["ClusterWatcher", "EjectionEvent", "Phase", "drive"]


@dataclass
class Phase:
    """What one burst of traffic got, as the client saw it (shown live only)."""

    name: str
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> str:
        ok = sum(n for code, n in self.statuses.items() if 200 <= code < 300)
        return f"{ok}/{self.sent} ok" + "".join(
            f", {n}x {code or 'error'}" for code, n in sorted(self.statuses.items())
            if not 200 <= code < 300)


def drive(console: Console, url: str, phase: Phase, requests: int | None = None,
          until: Callable[[], bool] | None = None, limit: float = 15.0,
          concurrency: int = 4, check: Callable[[], None] | None = None) -> Phase:
    """Send GETs to ``url`` from ``concurrency`` clients: ``requests`` of them, or until
    ``until()`` is true, or for ``limit`` seconds, whichever comes first. ``check`` is
    called a few times a second and stops the traffic by raising (a process died)."""
    lock = threading.Lock()
    deadline = time.monotonic() + limit
    stop = threading.Event()
    total = requests

    def more() -> bool:
        with lock:
            if stop.is_set() or time.monotonic() > deadline:
                return False
            if total is not None and phase.sent + inflight[0] >= total:
                return False
            inflight[0] += 1
            return True

    inflight = [0]

    def worker() -> None:
        with httpx.Client(timeout=10.0) as client:
            while more():
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    inflight[0] -= 1
                    phase.statuses[status] += 1
                # A steady ~150 req/s is plenty to see everything, and leaves CPU for the mesh.
                time.sleep(0.01)
                if until is not None and until():
                    stop.set()

    tty = console.is_terminal
    progress = Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(),
                        MofNCompleteColumn() if total else TextColumn("{task.completed} sent"),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                        console=console, transient=False, disable=not tty)
    with progress:
        task = progress.add_task(phase.name, total=total, detail="")
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(worker) for _ in range(concurrency)]
            last_line = 0.0
            while not all(f.done() for f in futures):
                time.sleep(0.1)
                if check is not None:
                    try:
                        check()
                    except BaseException:
                        stop.set()
                        raise
                progress.update(task, completed=phase.sent, detail=phase.summary())
                if not tty and phase.sent and time.monotonic() - last_line >= 2.0:
                    last_line = time.monotonic()
                    print(f"  {phase.name}: {phase.summary()}", flush=True)
            for future in futures:
                future.result()
        progress.update(task, completed=phase.sent, total=total or phase.sent,
                        detail=phase.summary())
    if not tty:
        print(f"  {phase.name}: done, {phase.summary()}", flush=True)
        sys.stdout.flush()
    return phase


@dataclass
class EjectionEvent:
    """One ejection of one endpoint; ``returned_at`` is when the sidecar listed it as
    healthy again, or when it was seen ejected anew (``again``: it came back still
    failing, between two samples, and was ejected for longer)."""

    address: str
    ejected_at: float
    number: int
    seconds: float
    returned_at: float | None = None
    again: bool = False


class ClusterWatcher:
    """Polls ``GET /clusters`` of a sidecar and records, per endpoint of ``cluster``, when
    the sidecar reported it ejected and when it reported it back, and when an endpoint
    appeared in the cluster (``joined``) or left it (``left``), seconds since ``t0``."""

    def __init__(self, admin_url: str, cluster: str, t0: float, interval: float = 0.1) -> None:
        self.url = f"{admin_url}/clusters"
        self.cluster = cluster
        self.t0 = t0
        self.interval = interval
        self.events: list[EjectionEvent] = []
        self.last: dict[str, Any] = {}
        self._open: dict[str, EjectionEvent] = {}
        self.joined: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self._members: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClusterWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def ejected_now(self) -> set[str]:
        return set(self._open)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    self.sample(client.get(self.url).json())
                self._stop.wait(self.interval)

    def sample(self, body: dict[str, Any]) -> None:
        now = time.monotonic() - self.t0
        for cluster in body.get("clusters", []):
            if cluster.get("name") != self.cluster:
                continue
            self.last = cluster
            members = {e.get("address", "?") for e in cluster.get("endpoints", [])}
            for address in members - self._members:
                self.joined.setdefault(address, now)
            for address in self._members - members:
                self.left.setdefault(address, now)
            self._members = members
            for endpoint in cluster.get("endpoints", []):
                address = endpoint.get("address", "?")
                number = int(endpoint.get("ejection_count") or 0)
                current = self._open.get(address)
                if endpoint.get("ejected") and (current is None or number > current.number):
                    if current is not None:
                        current.returned_at, current.again = now, True
                    event = EjectionEvent(address, now, number, float(
                        endpoint.get("ejection_seconds_left") or 0.0))
                    self._open[address] = event
                    self.events.append(event)
                elif not endpoint.get("ejected") and current is not None:
                    self._open.pop(address).returned_at = now
