"""Policy instances -> the data path's :class:`~sidemesh.datapath.chain.Chain`."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence

from sidemesh.api.policy import Policy
from sidemesh.datapath.chain import Chain, HookCall

__all__ = ["compile_chain"]


def _overrides(policy: Policy, hook: str) -> bool:
    return getattr(type(policy), hook, None) is not getattr(Policy, hook, None)


def _calls(policies: Sequence[Policy], hook: str) -> list[HookCall]:
    calls: list[HookCall] = []
    for policy in policies:
        if _overrides(policy, hook):
            method = getattr(policy, hook)
            calls.append((method, inspect.iscoroutinefunction(method)))
    return calls


def compile_chain(policies: Sequence[Policy]) -> Chain:
    """The chain of one route (or listener): a policy that does not override a hook
    costs nothing on the request path for that hook."""
    reverse = list(reversed(policies))
    setup = [p for p in policies if _overrides(p, "connection_setup")]
    pool_key = (
        json.dumps([[p.context.plugin, p.config] for p in setup], sort_keys=True, default=str)
        if setup
        else None
    )
    return Chain(
        policies,
        request=_calls(policies, "on_request"),
        select=[p.select_upstream for p in policies if _overrides(p, "select_upstream")],
        response=_calls(reverse, "on_response"),
        complete=_calls(reverse, "on_complete"),
        setup=[p.connection_setup for p in setup],
        pool_key=pool_key,
        close=[p.close for p in policies],
        waiting=[p.waiting_for for p in policies if _overrides(p, "waiting_for")],
    )
