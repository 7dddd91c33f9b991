"""Entry point of the ``sidemesh-circuit`` distribution."""

from __future__ import annotations

from sidemesh import Policy, hookimpl, worker_count

from .policy import CircuitPolicy
from .workers import WorkersCircuitPolicy

__all__ = ["sidemesh_policies"]


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    # Several workers count and eject cluster-wide; one keeps the plain (cheaper) hooks.
    return [WorkersCircuitPolicy if worker_count() > 1 else CircuitPolicy]
