"""The weighted choice itself, kept pure so ``sidemesh explain`` and tests can ask
exactly what the data path would do.

A sticky key is hashed with BLAKE2b (never Python's ``hash()``, which is salted per
process) to a 64-bit number, scaled onto ``[0, total)`` and looked up in the cumulative
weights. Scaling (rather than a modulo) keeps keys in place when weights move: going
from 90/10 to 80/20 moves only the keys between the 80% and 90% points, and every
sidecar with the same weights puts a key in the same place.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from sidemesh import Headers

__all__ = ["Weights", "choose", "key_point", "sticky_key"]


def key_point(key: str, total: int) -> int:
    """Where ``key`` falls on ``[0, total)``: stable across processes and machines."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") * total) >> 64


class Weights:
    """Cumulative weights of a destination list, compiled once per config."""

    __slots__ = ("_bounds", "_only", "total")

    def __init__(self, weights: Sequence[int]) -> None:
        self._bounds = list(itertools.accumulate(weights))
        self.total = self._bounds[-1] if self._bounds else 0
        if self.total <= 0:
            raise ValueError("the weights of a split must sum to more than 0")
        nonzero = [i for i, w in enumerate(weights) if w > 0]
        #: the index when a single destination takes everything (no draw needed).
        self._only = nonzero[0] if len(nonzero) == 1 else None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Weights:
        return cls([int(d.get("weight", 1)) for d in config.get("destinations", [])])

    def pick(self, key: str | None = None) -> int:
        """The destination index for ``key``, or a random weighted one for ``None``."""
        if self._only is not None:
            return self._only
        # random() rather than randrange(), which is Python code: a third of the cost.
        point = int(random.random() * self.total) if key is None else key_point(key, self.total)
        return bisect.bisect_right(self._bounds, point)


def choose(config: Mapping[str, Any], key: str | None = None) -> int:
    """The index in ``config["destinations"]`` a request with sticky ``key`` goes to.

    This is the data path's own choice: a split policy with the same ``destinations``
    sends a request whose ``hash_on`` header or cookie equals ``key`` to this index, on
    every sidecar. With ``key=None`` the choice is random, weighted (what a request
    without the key gets). A destination without ``weight`` weighs 1, as in the schema.

    :param config: a split's config (only ``destinations`` is read).
    :param key: the sticky key's value (``"jason"`` for ``end-user: jason``).
    :raises ValueError: when the weights sum to 0.
    """
    return Weights.of(config).pick(key)


def sticky_key(hash_on: str | None, headers: Headers) -> str | None:
    """The value ``hash_on`` (``header:NAME`` or ``cookie:NAME``) names in ``headers``;
    ``None`` when absent or empty. Repeated headers count as one comma-joined value."""
    if not hash_on:
        return None
    kind, _, name = hash_on.partition(":")
    if kind == "header":
        return ",".join(headers.get_all(name)) or None
    for line in headers.get_all("cookie"):
        # RFC 6265 cookie-string: "a=1; b=2"; parsed by hand because SimpleCookie drops
        # a whole line over one pair it dislikes.
        for pair in line.split(";"):
            found, sep, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if sep and found.strip() == name and value:
                return value
    return None
