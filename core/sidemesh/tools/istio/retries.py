"""HTTPRetry -> the retry plugin's config, ``retryOn`` conditions mapped to ours."""

from __future__ import annotations

from typing import Any

from sidemesh.api.durations import format_duration, parse_duration
from sidemesh.tools.istio.resources import Report, Resource, duration

__all__ = ["default_retry", "retry_config"]

_SAME = {"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
         "retriable-status-codes"}
#: Over HTTP/1.1 a refused stream is a connection closed before the response.
_EQUIVALENT = {"refused-stream": "reset"}
#: gRPC status conditions: never met by HTTP/1.1 traffic, the only kind sidemesh carries.
_GRPC = {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
_MAX_ATTEMPTS = 10


def _retry_on(text: str, resource: Resource, path: str,
              report: Report) -> tuple[list[str], list[int]]:
    conditions: list[str] = []
    codes: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.isdigit():
            code = int(item)
            if 100 <= code <= 599 and code not in codes:
                codes.append(code)
            elif not 100 <= code <= 599:
                report.loss(resource, path, f"{item} is not an HTTP status code")
            continue
        ours = _EQUIVALENT.get(item, item)
        if item == "reset-before-request":
            report.loss(resource, path, "reset-before-request is retried as reset: sidemesh "
                        "does not tell whether the request was sent before the reset")
            ours = "reset"
        elif item in _GRPC:
            report.note(resource, path, f"{item}: a gRPC status, never met over HTTP/1.1")
            continue
        elif ours not in _SAME:
            report.loss(resource, path, f"{item}: sidemesh retries on {', '.join(sorted(_SAME))}"
                        " only")
            continue
        if ours not in conditions:
            conditions.append(ours)
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return conditions, codes


def retry_config(retries: Any, resource: Resource, path: str,
                 report: Report) -> dict[str, Any] | None:
    """The retry plugin's config for a route's ``retries`` (``None``: no retries, when
    ``attempts`` is 0). Without ``retries`` Istio still retries, and without ``retryOn``
    on connect-failure,refused-stream,unavailable,cancelled,503: those, over HTTP/1.1."""
    if retries is None:
        return default_retry()
    if not isinstance(retries, dict):
        report.loss(resource, path, "not a retry policy")
        return None
    attempts = retries.get("attempts", 2)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        report.loss(resource, f"{path}.attempts", f"{attempts!r} is not a number of retries")
        attempts = 2
    if attempts == 0:
        return None
    if attempts > _MAX_ATTEMPTS:
        report.loss(resource, f"{path}.attempts", f"{attempts} retries: sidemesh makes at most "
                    f"{_MAX_ATTEMPTS}")
        attempts = _MAX_ATTEMPTS
    # Envoy retries every method; sidemesh retries POST and the like only when told.
    config = {**default_retry(), "attempts": attempts}
    if retries.get("retryOn"):
        conditions, codes = _retry_on(str(retries["retryOn"]), resource, f"{path}.retryOn",
                                      report)
        config.update(retry_on=conditions, retriable_status_codes=codes)
    if "perTryTimeout" in retries:
        value = duration(retries["perTryTimeout"], resource, f"{path}.perTryTimeout", report)
        if value is not None and parse_duration(value) > 0:
            config["per_try_timeout"] = value
    if "backoff" in retries:
        value = duration(retries["backoff"], resource, f"{path}.backoff", report)
        if value is not None:
            # Envoy's max_interval is 10 times the base interval unless set.
            config["base_interval"] = value
            config["max_interval"] = format_duration(parse_duration(value) * 10)
    if retries.get("retryIgnorePreviousHosts") is False:
        report.loss(resource, f"{path}.retryIgnorePreviousHosts", "sidemesh always tries "
                    "another endpoint first on a retry")
    if retries.get("retryRemoteLocalities"):
        report.note(resource, f"{path}.retryRemoteLocalities",
                    "sidemesh has no localities: every endpoint may be retried")
    report.unknown(resource, path, retries, ("attempts", "retryOn", "perTryTimeout", "backoff",
                                             "retryIgnorePreviousHosts",
                                             "retryRemoteLocalities"))
    return config


def default_retry() -> dict[str, Any]:
    """Istio's retry policy for a route that sets none."""
    return {"attempts": 2, "retry_on": ["connect-failure", "reset", "retriable-status-codes"],
            "retriable_status_codes": [503], "retry_non_idempotent": True}
