"""The counters workers share (``sidemesh.shared_counter``): one table in a file, a column
per worker, seen alike by separate processes; in memory when the sidecar runs alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sidemesh
from sidemesh.api.shared import ENV_INDEX, ENV_STATE, create_table

_WORKER = """
import sys
import sidemesh
counter = sidemesh.shared_counter("circuit/app/requests")
until = sidemesh.shared_counter("circuit/app/10.0.0.1:80/ejected_until_us")
for line in sys.stdin:
    op, _, value = line.strip().partition(" ")
    if op == "add":
        counter.add(int(value))
    elif op == "set":
        until.set(int(value))
    print(sidemesh.worker_count(), counter.mine, counter.total, until.highest, flush=True)
"""


class _Worker:
    """A process mapping the table as worker ``index``, driven line by line."""

    def __init__(self, state: Path, index: int) -> None:
        env = {**os.environ, ENV_STATE: str(state), ENV_INDEX: str(index)}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, line: str) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return [int(v) for v in self.proc.stdout.readline().split()]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_workers_see_each_others_columns_and_a_restart_clears_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    create_table(state, 2)
    first, second = _Worker(state, 0), _Worker(state, 1)
    try:
        assert first.send("add 3") == [2, 3, 3, 0]
        assert second.send("add 2") == [2, 2, 5, 0]
        assert second.send("set 7000000") == [2, 2, 5, 7000000]
        assert first.send("set 5000000") == [2, 3, 5, 7000000]  # the later ejection wins
        assert first.send("add -1") == [2, 2, 4, 7000000]
        second.stop()
        # A restarted worker has nothing in flight: its column starts at 0.
        second = _Worker(state, 1)
        assert second.send("add 0") == [2, 0, 2, 5000000]
    finally:
        first.stop()
        second.stop()


def test_alone_the_counters_live_in_memory() -> None:
    assert sidemesh.worker_count() == 1
    counter = sidemesh.shared_counter("test/alone")
    assert counter is sidemesh.shared_counter("test/alone")
    counter.add(2)
    counter.add(-1)
    assert (counter.mine, counter.total, counter.highest) == (1, 1, 1)
    counter.set(0)
