"""The sidecar agent's last applied config, on disk, for a start while the control plane
is unreachable."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["StateCache"]

log = logging.getLogger("sidemesh")


class StateCache:
    """The last applied config of one service, on disk (``DIR/<service>.json``)."""

    def __init__(self, directory: Path, service: str) -> None:
        self.path = directory / f"{service}.json"
        self.service = service

    def save(self, version: int, config: dict[str, Any], control: str,
             endpoints: dict[str, Any] | None = None) -> None:
        """Keep ``config`` and the endpoints of the services its clusters name (a sidecar
        restarted while the control plane is down keeps sending to them)."""
        # Temp file + fsync + rename: a crash leaves the old copy or the new one whole.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({"service": self.service, "version": version, "control": control,
                           "saved_at": time.time(), "config": config,
                           "endpoints": endpoints or {}})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def save_endpoints(self, endpoints: dict[str, Any], control: str) -> None:
        """Replace the saved endpoints, keeping the saved config."""
        saved = self.load()
        if saved is not None:
            self.save(saved[0], saved[1], control, endpoints)

    def load(self) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """The saved version, config and endpoints (``{}`` in a file from before)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the saved config %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or data.get("service") != self.service or not (
            isinstance(data.get("version"), int) and isinstance(data.get("config"), dict)
        ):
            log.warning("ignoring the saved config %s: not one of %s", self.path, self.service)
            return None
        endpoints = data.get("endpoints")
        return data["version"], data["config"], endpoints if isinstance(endpoints, dict) else {}
