"""Entry point of the ``mtls`` plugin."""

from __future__ import annotations

from sidemesh import Policy, hookimpl

from .policy import MtlsPolicy

__all__ = ["sidemesh_policies"]


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [MtlsPolicy]
