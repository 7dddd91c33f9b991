"""What every sidemesh process starts with: JSON log lines on stderr and its coroutine
run on uvloop.

Apart from :mod:`sidemesh.process.runtime` so that a worker of ``--concurrency N``
imports neither the admin API nor the status port, which only the parent serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

__all__ = ["run_loop", "setup_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger("sidemesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def run_loop(main: Any) -> int:
    """Run a coroutine on uvloop when it is installed (2x the plain loop's speed here)."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(main))
    return int(uvloop.run(main))
