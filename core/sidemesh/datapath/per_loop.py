"""One shared object per event loop (the deadline sweeper, the held writes), made on
first use and dropped with its loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """Calling it with a loop gives that loop's object, made by ``make`` the first time."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, loop: asyncio.AbstractEventLoop) -> T:
        found = self._made.get(loop)
        if found is None:
            found = self._made[loop] = self._make(loop)
        return found
