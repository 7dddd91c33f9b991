"""Entry point of the ``sidemesh-split`` distribution."""

from __future__ import annotations

from sidemesh import Policy, hookimpl

from .policy import SplitPolicy

__all__ = ["sidemesh_policies"]


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [SplitPolicy]
