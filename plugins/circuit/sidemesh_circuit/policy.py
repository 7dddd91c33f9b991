"""The circuit policy: cluster limits (circuit breakers) and outlier detection."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from sidemesh import (
    Attempt,
    ClusterView,
    Policy,
    PolicyContext,
    Request,
    Response,
    ResponseFlag,
    parse_duration,
)

from .metrics import watch
from .outlier import OutlierDetector, OutlierSettings

__all__ = ["CircuitPolicy"]

# max_ejection_time when not given, unless base_ejection_time is longer (Envoy's).
_DEFAULT_MAX_EJECTION_TIME = 300.0


def _schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _tighter(current: int | None, mine: int) -> int:
    # Routes sharing a cluster share its limits: the strictest one wins.
    return mine if current is None else min(current, mine)


# Compiled (pyproject.toml), and still a base class for other plugins' policies.
@mypyc_attr(allow_interpreted_subclasses=True)
class CircuitPolicy(Policy):
    """Envoy's circuit breakers and consecutive-error outlier detection; see README."""

    name = "circuit"
    schema: ClassVar[dict[str, Any]] = _schema()

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        self._max_requests: int = config["max_requests"]
        self._detector: OutlierDetector | None = None
        cluster = context.cluster
        self._cluster = cluster
        self._cluster_name = cluster.name if cluster is not None else None
        if cluster is None or context.route is None:
            return
        limit = cluster.connections
        limit.max_connections = _tighter(limit.max_connections, config["max_connections"])
        limit.max_pending = _tighter(limit.max_pending, config["max_pending_requests"])
        cluster.retries.max_active = _tighter(cluster.retries.max_active, config["max_retries"])
        watch(cluster)
        base = parse_duration(config["base_ejection_time"])
        longest = config["max_ejection_time"]
        settings = OutlierSettings(
            consecutive_5xx=config["consecutive_5xx"],
            consecutive_gateway_failure=config["consecutive_gateway_failure"],
            interval=parse_duration(config["interval"]),
            base_ejection_time=base,
            max_ejection_time=(
                parse_duration(longest)
                if longest is not None
                else max(_DEFAULT_MAX_EJECTION_TIME, base)
            ),
            max_ejection_percent=config["max_ejection_percent"],
        )
        self._detector = self.detector(settings, cluster, context.shared)

    @staticmethod
    def detector(
        settings: OutlierSettings, cluster: ClusterView, shared: dict[str, Any]
    ) -> OutlierDetector:
        return OutlierDetector(settings, cluster, shared)

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        errors = []
        for key in ("interval", "base_ejection_time"):
            if parse_duration(config[key]) <= 0:
                errors.append(f"{key} must be greater than 0")
        base, longest = config["base_ejection_time"], config["max_ejection_time"]
        if longest is not None and parse_duration(longest) < parse_duration(base):
            # Envoy refuses the cluster ("max_ejection_time cannot be smaller than
            # base_ejection_time"); clamping instead would hide the typo.
            errors.append(
                f"max_ejection_time ({longest}) must not be shorter than base_ejection_time "
                f"({base}); leave it out for 300s, or base_ejection_time when that is longer"
            )
        return errors

    def on_request(self, request: Request) -> Response | None:
        cluster = self._cluster
        if (
            cluster is not None
            and request.cluster == self._cluster_name
            and cluster.active_requests >= self._max_requests
        ):
            cluster.count_overflow("max_requests")
            request.add_flag(ResponseFlag.UPSTREAM_OVERFLOW)
            return Response.overflow()
        return None

    def on_response(self, request: Request, attempt: Attempt) -> None:
        if self._detector is not None:
            self._detector.record(attempt)
