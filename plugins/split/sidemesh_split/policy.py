"""The ``split`` policy: one weighted choice per request, kept for all its attempts."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from sidemesh import (
    ClusterView,
    EndpointView,
    Explanation,
    Policy,
    PolicyContext,
    Request,
    Response,
    StashKey,
)

from .checks import config_errors
from .choose import Weights, sticky_key
from .explain import explanation
from .metrics import MIRRORED, REQUESTS

__all__ = ["CHOSEN", "SplitPolicy", "Target"]

#: The index of the destination chosen for a request, kept for all its attempts.
CHOSEN = StashKey[int]("split.destination")


def _load_schema() -> dict[str, Any]:
    text = resources.files("sidemesh_split").joinpath("schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class Target:
    """One destination (or the mirror), resolved against the applied clusters.

    :ivar cluster: the cluster requests go to.
    :ivar subset: the subset of it, or ``None`` for the whole cluster.
    :ivar switch: whether the request's cluster must change (another cluster).
    :ivar members: the subset's endpoints now, or ``None`` when there is no subset (read
        from the cluster on each use: a discovered cluster's endpoints change in place).
    :ivar member_set: the same as a set, for the per-attempt membership test.
    :ivar label: ``cluster/subset`` or ``cluster``, for metrics and the access log.
    """

    __slots__ = ("_members", "_set", "cluster", "label", "subset", "switch", "view")

    def __init__(self, spec: Mapping[str, Any], context: PolicyContext, where: str) -> None:
        route_cluster = context.cluster
        name = spec.get("cluster") or (route_cluster.name if route_cluster else None)
        cluster: ClusterView | None = context.clusters.get(name) if name else None
        if cluster is None:
            raise ValueError(f"split {where}: cluster {name!r} is not defined")
        self.cluster = cluster.name
        self.subset: str | None = spec.get("subset")
        self.switch = route_cluster is None or cluster.name != route_cluster.name
        self.view = cluster
        self._members: Sequence[EndpointView] = ()
        self._set: frozenset[EndpointView] = frozenset()
        if self.subset is not None:
            members = cluster.subsets.get(self.subset)
            # A discovered cluster's subset may be empty until instances register.
            if members is None or (not members and cluster.endpoints):
                # Reached only for a listener-level split on a route whose cluster lacks
                # the subset (validation cannot see which routes a listener entry serves).
                raise ValueError(
                    f"split {where}.subset {self.subset!r} selects no endpoint of cluster "
                    f"{cluster.name!r} (route {context.route!r})"
                )
        self.label = f"{self.cluster}/{self.subset}" if self.subset else self.cluster


    @property
    def members(self) -> Sequence[EndpointView] | None:
        if self.subset is None:
            return None
        return self.view.subsets.get(self.subset, ())

    @property
    def member_set(self) -> frozenset[EndpointView]:
        members = self.members or ()
        if members is not self._members:
            self._members, self._set = members, frozenset(members)
        return self._set


# Compiled (pyproject.toml), and still a base class for other plugins' policies.
@mypyc_attr(allow_interpreted_subclasses=True)
class SplitPolicy(Policy):
    """Weighted split among subsets or clusters; sticky on a header or cookie; mirror."""

    name: ClassVar[str] = "split"
    schema: ClassVar[dict[str, Any]] = _load_schema()

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        self._hash_on: str | None = config.get("hash_on")
        destinations = config.get("destinations", [])
        self.weights = Weights([int(d.get("weight", 1)) for d in destinations])
        self.targets: list[Target] = []
        self._mirror: Target | None = None
        self._mirror_share = 0.0
        if context.route is None:
            # The listener-level instance only serves connection setup.
            return
        self.targets = [
            Target(d, context, f"destinations[{i}]") for i, d in enumerate(destinations)
        ]
        route = context.route
        self._counted = [REQUESTS.cell(context.listener, route, t.label) for t in self.targets]
        mirror = config.get("mirror")
        if mirror is not None and mirror.get("percent", 100) > 0:
            self._mirror = Target(mirror, context, "mirror")
            self._mirror_share = float(mirror.get("percent", 100)) / 100.0
            self._mirrored = MIRRORED.cell(context.listener, route, self._mirror.label)

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        return config_errors(config, context)

    @classmethod
    def explain(
        cls, config: dict[str, Any], request: Request, context: PolicyContext
    ) -> Explanation | None:
        """The weights, this request's sticky pick and the mirror, for ``sidemesh explain``."""
        return explanation(config, request, context)

    def on_request(self, request: Request) -> Response | None:
        index = self.weights.pick(sticky_key(self._hash_on, request.headers))
        request.stash[CHOSEN] = index
        target = self.targets[index]
        if target.switch:
            request.cluster = target.cluster
        request.log["split"] = target.label
        self._counted[index][0] += 1
        mirror = self._mirror
        if mirror is not None and (
            self._mirror_share >= 1.0 or random.random() < self._mirror_share
        ):
            request.mirror(mirror.cluster, mirror.subset)
            self._mirrored[0] += 1
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[EndpointView]
    ) -> Sequence[EndpointView]:
        index = request.stash.get(CHOSEN, None)
        if index is None:
            return endpoints
        target = self.targets[index]
        members = target.members
        if members is None:
            return endpoints
        member_set = target.member_set
        kept = [e for e in endpoints if e in member_set]
        if kept or not endpoints:
            return kept
        # Earlier policies (a retry avoiding hosts it tried) left only other subsets:
        # stay in the chosen subset anyway, as Envoy's per-subset load balancer would,
        # preferring hosts not ejected and not tried yet.
        alive = [e for e in members if not e.ejected and e.healthy] or list(members)
        fresh = [e for e in alive if e not in request.tried]
        return fresh or alive
