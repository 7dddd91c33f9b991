"""Scaling reviews while traffic flows: one more pod starts, its sidecar registers itself
and productpage's sidecar gets it pushed; then it is stopped with SIGTERM, so its sidecar
deregisters, keeps serving a grace period while the callers get the update, then
drains. Every time here is what productpage's sidecar listed in its ``/clusters``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Instance
from .evidence import read_jsonl
from .procs import Child, DemoError, Supervisor
from .traffic import ClusterWatcher, Phase

__all__ = ["Scaler", "Scaling", "served"]

#: How many requests the new pod answers before it is stopped.
SERVE_BEFORE_STOP = 50


def served(log: Path) -> int:
    """Requests a sidecar answered 2xx, counted in its access log."""
    return sum(1 for line in read_jsonl(log)
               if isinstance(line.get("status"), int) and 200 <= line["status"] < 300)


@dataclass
class Scaling:
    """What happened to the added pod (seconds since the demo's start)."""

    instance: Instance
    address: str
    started_at: float = 0.0
    joined_at: float | None = None
    stopped_at: float | None = None
    left_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    served: int = 0
    traffic: Phase = field(default_factory=lambda: Phase("scaling"))

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.traffic.statuses.items() if not 200 <= code < 300)


class Scaler(threading.Thread):
    """Runs the scale-out and scale-in beside the traffic; :meth:`check` raises what went
    wrong in it, so the traffic stops at once."""

    def __init__(self, sup: Supervisor, watcher: ClusterWatcher, scaling: Scaling,
                 start_pod: Callable[[], tuple[Child, Child]], access_log: Path,
                 say: Callable[[str], None], t0: float) -> None:
        super().__init__(daemon=True)
        self.sup, self.watcher, self.scaling = sup, watcher, scaling
        self.start_pod, self.access_log, self.say, self.t0 = start_pod, access_log, say, t0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise DemoError(f"{self.scaling.instance.name}: {what} within {timeout:.0f}s")
            time.sleep(0.05)

    def run(self) -> None:
        sc, name = self.scaling, self.scaling.instance.name
        try:
            sc.started_at = time.monotonic() - self.t0
            self.say(f"[bold green]scaling reviews to 4:[/bold green] started {name} "
                     f"({sc.instance.host}); its sidecar registers itself")
            app, sidecar = self.start_pod()
            self._wait("productpage's sidecar did not list it",
                       lambda: sc.address in self.watcher.joined, 30.0)
            sc.joined_at = self.watcher.joined[sc.address]
            self._wait(f"it did not answer {SERVE_BEFORE_STOP} requests",
                       lambda: served(self.access_log) >= SERVE_BEFORE_STOP, 15.0)
            sc.stopped_at = time.monotonic() - self.t0
            self.say(f"[bold]scaling reviews to 3:[/bold] SIGTERM to {name}'s sidecar; it "
                     "deregisters, then drains")
            sc.exit_code = self.sup.stop(sidecar)
            sc.exited_at = time.monotonic() - self.t0
            sc.served = served(self.access_log)
            self.sup.stop(app)
            # Its removal reached productpage's sidecar during the grace period; the
            # watcher's next sample shows it.
            self._wait("productpage's sidecar still lists it",
                       lambda: sc.address in self.watcher.left, 5.0)
            sc.left_at = self.watcher.left[sc.address]
        except BaseException as exc:  # handed to the main thread by check()
            self.error = exc
        finally:
            self.done.set()
