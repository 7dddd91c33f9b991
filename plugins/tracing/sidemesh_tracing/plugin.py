"""Entry point of the ``sidemesh-tracing`` distribution."""

from __future__ import annotations

from sidemesh import Policy, hookimpl

from .policy import TracingPolicy

__all__ = ["sidemesh_policies"]


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [TracingPolicy]
