"""Outlier detection: consecutive 5xx / gateway failures eject an endpoint for a while.

State lives in the circuit's ``context.shared`` (one per cluster, kept across routes and
config reloads); the ejection itself is the core's (:meth:`EndpointView.eject`), so the core
stops offering the endpoint and ``/clusters`` shows it. There is no timer: the sweep
that decays ejection counts runs lazily on the next response after an interval passed,
and an ejected endpoint returns by itself once its ``ejected_until`` is past.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mypy_extensions import mypyc_attr

from sidemesh import Attempt, ClusterView, EndpointView, ResponseFlag

from .metrics import EJECTIONS

__all__ = ["OutlierDetector", "OutlierSettings"]

#: failures before a response head that count against the endpoint, as a 503 would
#: (Envoy with split_external_local_origin_errors off). UO (our own limit) and UH (no
#: endpoint) say nothing about an endpoint.
_LOCAL_FAILURES = frozenset(
    {
        ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
        ResponseFlag.UPSTREAM_CONNECTION_TERMINATION,
        ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
        ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
    }
)
_GATEWAY = frozenset({502, 503, 504})


@dataclass(frozen=True)
class OutlierSettings:
    consecutive_5xx: int | None
    consecutive_gateway_failure: int | None
    interval: float
    base_ejection_time: float
    max_ejection_time: float
    max_ejection_percent: int


class _Host:
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_until")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        #: the end of the ejection this detector made, until it has seen it end.
        self.ejected_until = 0.0


class _State:
    """Per cluster, in ``context.shared``."""

    __slots__ = ("hosts", "last_sweep")

    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}
        self.last_sweep = time.monotonic()


# Compiled (pyproject.toml), and still a base class for detectors written in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class OutlierDetector:
    """Counts outcomes per endpoint of one cluster and ejects the outliers."""

    def __init__(
        self, settings: OutlierSettings, cluster: ClusterView, shared: dict[str, Any]
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self._cluster_name = cluster.name
        state = shared.get("outlier")
        if not isinstance(state, _State):
            state = shared["outlier"] = _State()
        self._state = state

    def record(self, attempt: Attempt) -> None:
        endpoint = attempt.endpoint
        if endpoint is None or endpoint.cluster != self._cluster_name:
            return
        response = attempt.response
        if response is None:
            if attempt.flag not in _LOCAL_FAILURES:
                return
            failed = gateway = True
        else:
            status = response.status
            failed = status >= 500
            gateway = failed and status in _GATEWAY
        now = time.monotonic()
        state = self._state
        if now - state.last_sweep >= self.settings.interval:
            self._sweep(now)
        host = state.hosts.get(endpoint.address)
        if host is None:
            host = state.hosts[endpoint.address] = _Host()
        if host.ejected_until:
            if now < host.ejected_until:
                return  # an answer that was on its way when the endpoint was ejected
            self._returned(host)
        elif not failed and not host.consecutive_5xx and not host.consecutive_gateway:
            return  # a success after successes: nothing to count, nothing to eject
        host.consecutive_5xx = host.consecutive_5xx + 1 if failed else 0
        host.consecutive_gateway = host.consecutive_gateway + 1 if gateway else 0
        settings = self.settings
        if (
            settings.consecutive_5xx is not None
            and host.consecutive_5xx >= settings.consecutive_5xx
        ):
            self._eject(endpoint, host, "consecutive_5xx", now)
        elif (
            settings.consecutive_gateway_failure is not None
            and host.consecutive_gateway >= settings.consecutive_gateway_failure
        ):
            self._eject(endpoint, host, "consecutive_gateway_failure", now)

    def _eject(self, endpoint: EndpointView, host: _Host, reason: str, now: float) -> None:
        endpoints = self.cluster.endpoints
        ejected = sum(1 for e in endpoints if e.ejected_until > now)
        # Envoy checks the cap counting the endpoint about to go: one of three is 33%.
        if 100 * (ejected + 1) > self.settings.max_ejection_percent * len(endpoints):
            endpoint.stats["ejections_skipped_max_percent"] = (
                endpoint.stats.get("ejections_skipped_max_percent", 0) + 1
            )
            return
        settings = self.settings
        seconds = min(
            settings.base_ejection_time * (endpoint.ejection_count + 1),
            settings.max_ejection_time,
        )
        endpoint.eject(seconds)
        host.ejected_until = endpoint.ejected_until
        host.consecutive_5xx = host.consecutive_gateway = 0
        endpoint.stats[f"ejections_{reason}"] = endpoint.stats.get(f"ejections_{reason}", 0) + 1
        EJECTIONS.labels(self.cluster.name, reason).inc()

    @staticmethod
    def _returned(host: _Host) -> None:
        # Back from an ejection: it starts with a clean record (Envoy resets on uneject).
        host.ejected_until = 0.0
        host.consecutive_5xx = host.consecutive_gateway = 0

    def _sweep(self, now: float) -> None:
        """Each interval an endpoint spends neither ejected nor newly ejected takes one
        off its ejection count, so the next ejection of a now-good endpoint is short."""
        state = self._state
        interval = self.settings.interval
        intervals = int((now - state.last_sweep) / interval)
        start = state.last_sweep
        state.last_sweep = start + intervals * interval
        for endpoint in self.cluster.endpoints:
            host = state.hosts.get(endpoint.address)
            if host is not None and host.ejected_until and now >= host.ejected_until:
                self._returned(host)
            if endpoint.ejection_count == 0 or endpoint.ejected_until > now:
                continue
            quiet_since = max(start, endpoint.ejected_until)
            quiet = intervals if quiet_since == start else int((now - quiet_since) / interval)
            if quiet:
                endpoint.forgive(quiet)
