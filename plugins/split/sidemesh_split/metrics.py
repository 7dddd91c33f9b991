"""The plugin's Prometheus counters, on prometheus_client's default registry (the one
the admin ``/metrics`` endpoint serves).

They are counted on every request, so not with prometheus_client's ``Counter``: its
``inc()`` takes a lock and makes four Python calls, a microsecond a request, most of
what a split costs. A :class:`Tally` adds to a plain integer the policy holds and is
read into a counter family when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MIRRORED", "REQUESTS", "Tally"]


class Tally(Collector):
    """A counter family whose children are one-item lists, ``cell[0] += 1`` a count.

    A child lives as long as the process, as a ``Counter``'s would: a config reload makes
    new policies, which take the same cells and go on counting.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._cells: dict[tuple[str, ...], list[int]] = {}
        REGISTRY.register(self)

    def cell(self, *labels: str) -> list[int]:
        """The count for ``labels`` (in ``labelnames`` order)."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        return self._cells.setdefault(labels, [0])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, cell in list(self._cells.items()):
            family.add_metric(labels, cell[0])
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


REQUESTS = Tally(
    "sidemesh_split_requests",
    "Requests a split sent to each destination (counted once per request, not per "
    "attempt). destination is cluster/subset, or cluster for a whole cluster.",
    ("listener", "route", "destination"),
)
MIRRORED = Tally(
    "sidemesh_split_mirrored",
    "Requests a split asked to mirror (shadow copies are fire-and-forget: their outcome "
    "is on /clusters as the endpoint's mirror_ok / mirror_failed stats).",
    ("listener", "route", "destination"),
)
