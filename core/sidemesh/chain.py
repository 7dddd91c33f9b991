"""A route's plugin chain, compiled into direct calls when a config is applied.

pluggy is not used per request: it orders hooks globally and cannot await. Here each
route keeps, per data-path hook, the list of policies that actually override it, in
chain order (reverse order for response hooks), and whether each is a coroutine
function, so the request path does no lookups and awaits only what must be awaited.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

from .hookspecs import ConnectionSetup, Policy

__all__ = ["Chain", "HookCall"]

HookCall = tuple[Callable[..., Any], bool]


def _overrides(policy: Policy, hook: str) -> bool:
    return getattr(type(policy), hook, None) is not getattr(Policy, hook, None)


def _calls(policies: Sequence[Policy], hook: str) -> list[HookCall]:
    calls: list[HookCall] = []
    for policy in policies:
        if _overrides(policy, hook):
            method = getattr(policy, hook)
            calls.append((method, inspect.iscoroutinefunction(method)))
    return calls


class Chain:
    """The compiled chain of one route (or one listener)."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = list(policies)
        self.request: list[HookCall] = _calls(self.policies, "on_request")
        self.select: list[Callable[..., Any]] = [
            p.select_upstream for p in self.policies if _overrides(p, "select_upstream")
        ]
        self.response: list[HookCall] = _calls(list(reversed(self.policies)), "on_response")
        self.complete: list[HookCall] = _calls(list(reversed(self.policies)), "on_complete")
        self._setup = [p for p in self.policies if _overrides(p, "connection_setup")]
        #: identifies the TLS identity of upstream connections: routes whose connection
        #: setup policies have equal configs share pooled connections.
        self.pool_key: str | None = (
            json.dumps(
                [[p.context.plugin, p.config] for p in self._setup], sort_keys=True, default=str
            )
            if self._setup
            else None
        )

    def connection_setup(self, setup: ConnectionSetup) -> ConnectionSetup:
        for policy in self._setup:
            policy.connection_setup(setup)
        return setup

    async def close(self) -> None:
        for policy in self.policies:
            await policy.close()
