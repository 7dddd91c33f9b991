"""One JSON line per request, written in batches.

A write per request costs a system call each; lines are collected and flushed on the
next loop iteration (or when the batch is large), which keeps the log current to within
milliseconds at a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

__all__ = ["AccessLog"]

BATCH = 256


class AccessLog:
    """Writes access-log lines to a stream; ``stream=None`` disables logging."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    @classmethod
    def open(cls, target: str) -> AccessLog:
        """``-`` for stdout, ``off`` for none, otherwise a file path (appended to)."""
        if target == "off":
            return cls(None)
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", encoding="utf-8"))

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def log(self, entry: dict[str, Any]) -> None:
        if self.stream is None:
            return
        entry.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._lines.append(json.dumps(entry, separators=(",", ":"), default=str))
        if len(self._lines) >= BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines or self.stream is None:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None
