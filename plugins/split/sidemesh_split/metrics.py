"""The plugin's Prometheus counters, on prometheus_client's default registry (the one
the admin ``/metrics`` endpoint serves)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["MIRRORED", "REQUESTS"]

REQUESTS = Counter(
    "sidemesh_split_requests",
    "Requests a split sent to each destination (counted once per request, not per "
    "attempt). destination is cluster/subset, or cluster for a whole cluster.",
    ["listener", "route", "destination"],
)
MIRRORED = Counter(
    "sidemesh_split_mirrored",
    "Requests a split asked to mirror (shadow copies are fire-and-forget: their outcome "
    "is on /clusters as the endpoint's mirror_ok / mirror_failed stats).",
    ["listener", "route", "destination"],
)
