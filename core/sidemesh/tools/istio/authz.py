"""Authorization rules -> the inbound listener's routes.

sidemesh authorises by SPIFFE principals with the mtls plugin: one ``allow`` list on the
listener; a route may narrow it, but only one that originates mTLS, which a route to the
local app does not. So each inbound route either lets the listener's principals in or
denies everyone (``allow: []``). The routes are the regions Istio's rules draw: every
combination of the hosts, paths and methods they name, most specific first, so the
first route a request matches lies inside every operation that contains the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product
from typing import Any

__all__ = ["ANYONE", "Decision", "Op", "Rule", "collapse", "decide", "pattern", "regions"]

#: A principals set meaning any client, plaintext included (a rule without `from`).
ANYONE: frozenset[str] | None = None

Pattern = tuple[str, str]  # (kind, value): exact, prefix, suffix


@dataclass(frozen=True)
class Op:
    """An operation: each dimension a tuple of patterns, or ``None`` for any."""

    hosts: tuple[Pattern, ...] | None = None
    paths: tuple[Pattern, ...] | None = None
    methods: tuple[Pattern, ...] | None = None


@dataclass(frozen=True)
class Rule:
    """A rule that matched requests from ``principals`` (``None``: anyone) to ``ops``."""

    principals: frozenset[str] | None
    ops: tuple[Op, ...]
    deny: bool = False


@dataclass(frozen=True)
class Region:
    host: Pattern | None
    path: Pattern | None
    method: Pattern | None

    def match(self) -> dict[str, Any]:
        match: dict[str, Any] = {}
        if self.host is not None:
            kind, value = self.host
            match["host"] = {"exact": value, "prefix": f"{value}*"}.get(kind, f"*{value}")
        if self.path is None:
            match["prefix"] = "/"
        else:
            kind, value = self.path
            match.update({"exact": {"path": value}, "prefix": {"prefix": value}}.get(
                kind, {"regex": ".*" + re.escape(value)}))
        if self.method is not None:
            match["methods"] = [self.method[1]]
        return match


@dataclass(frozen=True)
class Decision:
    region: Region
    deny: bool
    #: principals Istio allows that the route cannot (it denies them).
    narrowed: frozenset[str] | None = None


def pattern(value: str) -> Pattern | None:
    """Istio's ``*`` conventions: ``*`` (``None``: anything), ``x*``, ``*x``, exact."""
    if value == "*":
        return None
    if value.endswith("*"):
        return ("prefix", value[:-1])
    if value.startswith("*"):
        return ("suffix", value[1:])
    return ("exact", value)


def _covers(outer: Pattern, inner: Pattern) -> bool:
    """Every string ``inner`` matches, ``outer`` matches too."""
    kind, value = outer
    inner_kind, inner_value = inner
    if kind == "exact":
        return inner == outer
    if kind == "prefix":
        return inner_kind in ("exact", "prefix") and inner_value.startswith(value)
    return inner_kind in ("exact", "suffix") and inner_value.endswith(value)


def _dim_covers(patterns: tuple[Pattern, ...] | None, value: Pattern | None) -> bool:
    if patterns is None:
        return True
    return value is not None and any(_covers(p, value) for p in patterns)


def covers(op: Op, region: Region) -> bool:
    return (_dim_covers(op.hosts, region.host) and _dim_covers(op.paths, region.path)
            and _dim_covers(op.methods, region.method))


def _order(value: Pattern | None) -> tuple[int, int, str]:
    if value is None:
        return (3, 0, "")
    kind, text = value
    return ({"exact": 0, "suffix": 1, "prefix": 2}[kind], -len(text), text)


def regions(rules: list[Rule]) -> tuple[list[Region], list[str]]:
    """Every region the rules' operations draw, in match order, and the dimensions
    where prefix and suffix patterns meet (a request matching both gets the rules of
    the suffix only: approximate)."""
    dims: list[set[Pattern | None]] = [{None}, {None}, {None}]
    for rule in rules:
        for op in rule.ops:
            for i, patterns in enumerate((op.hosts, op.paths, op.methods)):
                dims[i].update(patterns or ())
    mixed = [name for name, values in zip(("hosts", "paths", "methods"), dims, strict=True)
             if {"prefix", "suffix"} <= {v[0] for v in values if v is not None}]
    ordered = [sorted(values, key=_order) for values in dims]
    return [Region(h, p, m) for h, p, m in product(*ordered)], mixed


def _union(sets: list[frozenset[str] | None]) -> frozenset[str] | None:
    if any(s is None for s in sets):
        return ANYONE
    return frozenset().union(*[s for s in sets if s is not None])


def decide(rules: list[Rule], allow_policies: bool
           ) -> tuple[frozenset[str] | None, list[Decision]]:
    """The listener's principals (``None``: anyone) and each region's route, in order.

    A DENY rule that names principals is applied to everyone on its operations (the
    caller reports it): denying more than Istio rather than less.
    """
    found, _ = regions(rules)
    allowed: list[tuple[Region, bool, frozenset[str] | None]] = []
    for region in found:
        denied = any(r.deny and any(covers(op, region) for op in r.ops) for r in rules)
        if denied or not allow_policies:
            allowed.append((region, denied, ANYONE))
            continue
        covering = [r.principals for r in rules
                    if not r.deny and any(covers(op, region) for op in r.ops)]
        allowed.append((region, not covering, _union(covering) if covering else frozenset()))
    open_regions = [who for _, deny, who in allowed if not deny]
    listener = _union(open_regions) if allow_policies and open_regions else ANYONE
    decisions = []
    for region, deny, who in allowed:
        if deny or who == listener:
            decisions.append(Decision(region, deny))
        else:
            # Fewer principals than the listener lets in: only a route that originates
            # mTLS could narrow them, so the route denies everyone.
            decisions.append(Decision(region, True, who))
    return listener, decisions


def collapse(decisions: list[Decision]) -> list[Decision]:
    """One catch-all route when every region decides the same."""
    return decisions[-1:] if len({d.deny for d in decisions}) == 1 else decisions
