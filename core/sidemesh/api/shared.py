"""Counters shared by the worker processes of one sidecar (``--concurrency N``).

Envoy keeps a cluster's circuit-breaker counts and its outlier ejections cluster-wide,
whichever worker thread serves a request. sidemesh's workers are processes, so what must
stay cluster-wide lives in a file mapped by every worker: a table of named counters with
one column per worker. A worker writes only its own column (no lock on the hot path) and
readers add the columns up (:attr:`SharedCounter.total`) or take the largest
(:attr:`SharedCounter.highest`). A sidecar running alone keeps the same objects in
memory, so a policy written against this API works unchanged with one worker.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from pathlib import Path

__all__ = ["SharedCounter", "create_table", "open_table", "shared_counter", "worker_count"]

_MAGIC = b"SMWKST01"
_HEADER = 32  # magic, workers, slots, reserved
_DIGEST = 16
_SLOTS = 4096
#: the environment a worker finds its table in (set by the parent process).
ENV_STATE, ENV_INDEX, ENV_WORKERS = (
    "SIDEMESH_WORKER_STATE", "SIDEMESH_WORKER_INDEX", "SIDEMESH_WORKERS",
)


class SharedCounter:
    """One named integer with a column per worker.

    :attr:`mine` is this worker's column; :attr:`total` the sum over workers (requests in
    flight on a cluster); :attr:`highest` the largest column (the end of an ejection
    any worker made).
    """

    __slots__ = ("_cells", "_first", "_index", "_workers")

    def __init__(self, cells: memoryview, first: int, index: int, workers: int) -> None:
        self._cells = cells
        self._first = first
        self._index = first + index
        self._workers = workers

    @property
    def mine(self) -> int:
        return int(self._cells[self._index])

    @property
    def total(self) -> int:
        first = self._first
        return sum(self._cells[first:first + self._workers])

    @property
    def highest(self) -> int:
        first = self._first
        return max(self._cells[first:first + self._workers])

    def add(self, delta: int) -> None:
        self._cells[self._index] += delta

    def set(self, value: int) -> None:
        self._cells[self._index] = value


class _Table:
    """The counters of this process: mapped from the parent's file, or in memory."""

    def __init__(self, cells: memoryview, index: int, workers: int,
                 lock_fd: int | None) -> None:
        self.cells = cells
        self.index = index
        self.workers = workers
        self.lock_fd = lock_fd
        self.slot_cells = _DIGEST // 8 + workers
        self.counters: dict[str, SharedCounter] = {}

    def counter(self, key: str) -> SharedCounter:
        found = self.counters.get(key)
        if found is None:
            first = self._slot(hashlib.blake2b(key.encode(), digest_size=_DIGEST).digest())
            found = self.counters[key] = SharedCounter(self.cells, first, self.index,
                                                       self.workers)
        return found

    def _slot(self, digest: bytes) -> int:
        """The first value cell of ``digest``'s slot, claimed under the file lock when it
        is new (slots are never freed, so a found slot stays valid)."""
        raw = self.cells.cast("B")
        start = int.from_bytes(digest[:4], "little") % _SLOTS
        for probe in range(_SLOTS):
            cell = _HEADER // 8 + ((start + probe) % _SLOTS) * self.slot_cells
            offset = cell * 8
            stored = bytes(raw[offset:offset + _DIGEST])
            if stored == digest:
                return cell + _DIGEST // 8
            if stored == bytes(_DIGEST):
                if self.lock_fd is not None:
                    fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
                try:
                    if bytes(raw[offset:offset + _DIGEST]) == bytes(_DIGEST):
                        raw[offset:offset + _DIGEST] = digest
                        return cell + _DIGEST // 8
                finally:
                    if self.lock_fd is not None:
                        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
                if bytes(raw[offset:offset + _DIGEST]) == digest:
                    return cell + _DIGEST // 8
        raise RuntimeError(f"the workers' shared table is full ({_SLOTS} counters)")

    def clear_column(self) -> None:
        """Zero this worker's column: a restarted worker has nothing in flight."""
        raw_slots = (len(self.cells) - _HEADER // 8) // self.slot_cells
        for slot in range(raw_slots):
            self.cells[_HEADER // 8 + slot * self.slot_cells + _DIGEST // 8 + self.index] = 0


def _size(workers: int) -> int:
    return _HEADER + _SLOTS * (_DIGEST + 8 * workers)


def create_table(path: Path, workers: int) -> None:
    """Write an empty table for ``workers`` workers at ``path`` (the parent does, once)."""
    with path.open("wb") as f:
        f.truncate(_size(workers))
        f.write(_MAGIC + workers.to_bytes(8, "little") + _SLOTS.to_bytes(8, "little"))


def open_table(path: Path, index: int) -> None:
    """Map the parent's table as worker ``index``; this process's counters live there
    from now on, with this worker's column zeroed."""
    global _TABLE
    fd = os.open(path, os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    if mapped[:8] != _MAGIC:
        raise ValueError(f"{path} is not a sidemesh workers' table")
    workers = int.from_bytes(mapped[8:16], "little")
    _TABLE = _Table(memoryview(mapped).cast("q"), index, workers, fd)
    _TABLE.clear_column()


def _open_from_environment() -> _Table:
    path = os.environ.get(ENV_STATE)
    if path:
        open_table(Path(path), int(os.environ.get(ENV_INDEX, "0")))
        assert _TABLE is not None
        return _TABLE
    return _Table(memoryview(bytearray(_size(1))).cast("q"), 0, 1, None)


_TABLE: _Table | None = None


def shared_counter(key: str) -> SharedCounter:
    """The counter named ``key`` (by convention ``plugin/cluster/what``), the same one in
    every worker of this sidecar; repeated calls give the same object."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _open_from_environment()
    return _TABLE.counter(key)


def worker_count() -> int:
    """How many worker processes share the counters (1 when the sidecar runs alone)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _open_from_environment()
    return _TABLE.workers
