"""A route's plugin chain as the data path runs it: per hook, the calls to make.

pluggy is not used per request: it orders hooks globally and cannot await. A chain keeps,
per data-path hook, the bound methods of the policies that actually override it, in
chain order (reverse order for response hooks), and whether each is a coroutine
function, so the request path does no lookups and awaits only what must be awaited.
:func:`sidemesh.api.chains.compile_chain` makes one from policy instances.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sidemesh.datapath.connections import ConnectionSetup

__all__ = ["Chain", "HookCall"]

HookCall = tuple[Callable[..., Any], bool]


class Chain:
    """The compiled chain of one route (or one listener)."""

    def __init__(
        self,
        policies: Sequence[Any],
        *,
        request: list[HookCall],
        select: list[Callable[..., Any]],
        response: list[HookCall],
        complete: list[HookCall],
        setup: list[Callable[[ConnectionSetup], None]],
        pool_key: str | None,
        close: list[Callable[[], Awaitable[None]]],
        waiting: list[Callable[[], str | None]],
    ) -> None:
        #: the policy instances, in chain order (for ``explain`` and introspection).
        self.policies = list(policies)
        self.request = request
        self.select = select
        self.response = response
        self.complete = complete
        self._setup = setup
        #: identifies the TLS identity of upstream connections: routes whose connection
        #: setup policies have equal configs share pooled connections.
        self.pool_key = pool_key
        self._close = close
        self._waiting = waiting

    def waiting_for(self) -> str | None:
        """What a policy of this chain still waits for before it can serve, if any."""
        for waiting in self._waiting:
            reason = waiting()
            if reason is not None:
                return reason
        return None

    def connection_setup(self, setup: ConnectionSetup) -> ConnectionSetup:
        for hook in self._setup:
            hook(setup)
        return setup

    async def close(self) -> None:
        for close in self._close:
            await close()
