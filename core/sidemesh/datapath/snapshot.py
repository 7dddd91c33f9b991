"""One applied config, compiled for the data path (built by
:func:`sidemesh.config.snapshots.build_snapshot`).

A snapshot is immutable once built; applying a config builds a new one completely
(policies instantiated, routes compiled) before swapping it in, so a config that fails
half-way is never half-applied, and in-flight requests finish on the snapshot they
started with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sidemesh.datapath.chain import Chain
from sidemesh.datapath.cluster import Cluster
from sidemesh.datapath.model import ListenerConfig, RouteConfig, SidecarConfig
from sidemesh.datapath.routing import RouteTable

__all__ = ["CompiledListener", "CompiledRoute", "Snapshot"]


@dataclass
class CompiledRoute:
    config: RouteConfig
    name: str
    cluster: str
    timeout: float | None
    chain: Chain


@dataclass
class CompiledListener:
    config: ListenerConfig
    name: str
    table: RouteTable
    routes: list[CompiledRoute]
    #: the listener-scope policies, used for connection setup when the listener starts.
    chain: Chain


@dataclass
class Snapshot:
    version: str
    source: str
    config: SidecarConfig
    clusters: dict[str, Cluster]
    listeners: dict[str, CompiledListener]
    #: per (plugin, cluster) state shared by routes and kept across reloads.
    shared: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    applied_at: float = field(default_factory=time.time)
    active: int = 0

    async def close(self) -> None:
        for listener in self.listeners.values():
            await listener.chain.close()
            for route in listener.routes:
                await route.chain.close()
