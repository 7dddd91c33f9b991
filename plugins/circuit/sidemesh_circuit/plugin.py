"""Entry point of the ``sidemesh-circuit`` distribution."""

from __future__ import annotations

from sidemesh import Policy, hookimpl

from .policy import CircuitPolicy

__all__ = ["sidemesh_policies"]


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [CircuitPolicy]
