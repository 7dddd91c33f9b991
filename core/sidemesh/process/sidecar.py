"""A data-path :class:`~sidemesh.datapath.sidecar.Sidecar` wired to the installed
plugins: configs compile with their policies, and each applied config is announced to
the plugins' ``sidemesh_config_applied`` hooks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sidemesh.api.policy import ControlPlane
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.snapshots import build_snapshot
from sidemesh.datapath.accesslog import AccessLog
from sidemesh.datapath.metrics import Metrics
from sidemesh.datapath.model import SidecarConfig
from sidemesh.datapath.sidecar import Sidecar
from sidemesh.datapath.snapshot import Snapshot

__all__ = ["control_plane", "new_sidecar", "not_ready", "read_token"]


def new_sidecar(
    registry: PluginRegistry,
    access_log: AccessLog | None = None,
    metrics: Metrics | None = None,
    control: ControlPlane | None = None,
) -> Sidecar:
    """A sidecar whose policies come from ``registry``; ``control`` is given to every
    policy's context (where an mTLS policy fetches certificates)."""

    def build(
        config: SidecarConfig, version: str, source: str, previous: Snapshot | None
    ) -> Snapshot:
        return build_snapshot(
            config, registry, version=version, source=source, previous=previous, control=control
        )

    def applied(config: SidecarConfig, version: str, source: str) -> None:
        registry.manager.hook.sidemesh_config_applied(
            version=version, source=source, config=config.raw
        )

    return Sidecar(build, access_log, metrics, on_applied=applied)


def not_ready(sidecar: Sidecar) -> str | None:
    """Why ``sidecar`` must not be sent traffic (``GET /ready``'s reason), or ``None``."""
    return "draining" if sidecar.draining else sidecar.waiting_for()


def read_token(token_file: str | None) -> str:
    """The sidecar's bearer token: the file's content, else ``$SIDEMESH_TOKEN``.

    :raises ValueError: with what to do, when there is none.
    """
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"token file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get("SIDEMESH_TOKEN", "").strip()
    if not token:
        raise ValueError(
            "no sidecar token: give --token-file FILE or set SIDEMESH_TOKEN "
            "(sidemesh token --service NAME issues one)"
        )
    return token


def control_plane(
    urls: Sequence[str], token_file: str | None, ca_file: str | None = None
) -> ControlPlane:
    """The control plane as the agent and policies see it, its replicas ``urls`` in the
    order they are tried (see :func:`~sidemesh.config.build.control_urls`); the token is
    read anew on each use, so a rotated token file takes effect without a restart."""
    return ControlPlane(urls[0], lambda: read_token(token_file), ca_file, tuple(urls))
