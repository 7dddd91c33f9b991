"""The retry policy: decides, after each attempt, whether the core should try again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr
from prometheus_client import Counter

from sidemesh import (
    Attempt,
    ClusterView,
    EndpointView,
    Policy,
    PolicyContext,
    Request,
    Response,
    ResponseFlag,
    SharedCounter,
    StashKey,
    parse_duration,
    shared_counter,
    worker_count,
)

from .conditions import IDEMPOTENT, RetryOn, backoff, retry_after
from .metrics import RETRY_ATTEMPTS, RETRY_OVERFLOW, RETRY_SUCCESS

__all__ = ["ATTEMPT_COUNT_HEADER", "OVERLOADED_HEADER", "RetryPolicy"]

#: sent on every upstream request: 1 on the first try (Envoy: x-envoy-attempt-count).
ATTEMPT_COUNT_HEADER = "x-sidemesh-attempt-count"
#: on a limit's answer from any sidecar (the core's ``Response.overflow()``; Envoy:
#: x-envoy-overloaded): a response carrying it is never retried, whatever its status.
OVERLOADED_HEADER = "x-sidemesh-overloaded"


def _schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class _State:
    """Per request: the cluster whose retry count holds this request's retry, while one
    is in flight (from the decision to the end of the retried attempt)."""

    __slots__ = ("counted", "everywhere")

    def __init__(self) -> None:
        self.counted: ClusterView | None = None
        #: with several workers: the cluster's retries across them, holding this one.
        self.everywhere: SharedCounter | None = None

    def release(self) -> None:
        if self.counted is not None:
            self.counted.retries.end()
            self.counted = None
        if self.everywhere is not None:
            self.everywhere.add(-1)
            self.everywhere = None


_STATE = StashKey[_State]("retry")
#: the state of every retriable request until it holds a retry: shared, as it holds
#: nothing (most requests never retry; replaced before anything is counted in it).
_IDLE = _State()


# Compiled (pyproject.toml), and still a base class for other plugins' policies.
@mypyc_attr(allow_interpreted_subclasses=True)
class RetryPolicy(Policy):
    """Envoy's retry policy with a retry budget; see the plugin's README."""

    name = "retry"
    schema: ClassVar[dict[str, Any]] = _schema()

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        self._retries: int = config["attempts"]
        per_try = config["per_try_timeout"]
        self._per_try = parse_duration(per_try) if per_try is not None else None
        self._retry_on = RetryOn(config["retry_on"], config["retriable_status_codes"])
        # Only a gRPC condition makes reading is_grpc (a header scan) worth it.
        self._grpc = bool(self._retry_on.grpc)
        self._base = parse_duration(config["base_interval"])
        self._cap = parse_duration(config["max_interval"])
        self._max_retry_after = parse_duration(config["max_retry_after"])
        self._ratio: float = config["budget"]["ratio"]
        self._min_concurrency: int = config["budget"]["min_concurrency"]
        self._any_method: bool = config["retry_non_idempotent"]
        self._buffer: int = config["buffer_limit"]
        self._children: dict[tuple[str, ...], Any] = {}
        #: max_retries is a circuit breaker, cluster-wide across workers as in Envoy.
        self._workers = worker_count() > 1

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        errors = []
        if parse_duration(config["base_interval"]) <= 0:
            errors.append("base_interval must be greater than 0")
        if parse_duration(config["max_interval"]) < parse_duration(config["base_interval"]):
            errors.append(
                f"max_interval ({config['max_interval']}) must not be shorter than "
                f"base_interval ({config['base_interval']})"
            )
        per_try = config["per_try_timeout"]
        if per_try is not None and parse_duration(per_try) <= 0:
            errors.append("per_try_timeout must be greater than 0 (null means none)")
        return errors

    # hooks ---------------------------------------------------------------------------
    def on_request(self, request: Request) -> Response | None:
        if self._per_try is not None:
            request.per_try_timeout = self._per_try
        # Naming a gRPC condition is consent to retry gRPC calls, POSTs all (as Envoy).
        if self._retries and (
            self._any_method
            or request.method in IDEMPOTENT
            or (self._grpc and request.is_grpc)
        ):
            if request.retry_buffer_limit < self._buffer:
                request.retry_buffer_limit = self._buffer
            request.stash[_STATE] = _IDLE
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[EndpointView]
    ) -> Sequence[EndpointView]:
        attempts = request.attempts
        request.headers.set(ATTEMPT_COUNT_HEADER, str(attempts))
        if attempts > 1:
            # Another host when there is one (Envoy's previous_hosts retry predicate).
            rest = [e for e in endpoints if e not in request.tried]
            if rest:
                return rest
        return endpoints

    def on_response(self, request: Request, attempt: Attempt) -> None:
        state = request.stash.get(_STATE, None)
        if state is None:
            return
        if state.counted is not None or state.everywhere is not None:
            state.release()
        # The route's timeout may have ended the request (time_left 0): nothing may
        # follow. Asked after the decision, which is usually "no retry" on a first try.
        if not self._retry_on(attempt, self._grpc and request.is_grpc):
            if attempt.number > 1 and request.time_left() != 0.0:
                self._inc(RETRY_SUCCESS, request.cluster)
            return
        if request.time_left() == 0.0:
            return
        if attempt.response is not None and OVERLOADED_HEADER in attempt.response.headers:
            # Another sidecar shed this request: retrying would add to its overload
            # (Envoy never retries a response with x-envoy-overloaded).
            request.log["retry"] = f"not retried: {OVERLOADED_HEADER}"
            return
        cluster = self.context.clusters.get(request.cluster)
        if cluster is None:
            return
        if attempt.number > self._retries:
            self._refuse(request, cluster, "attempts", ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
            return
        retries = cluster.retries
        active = retries.active
        overflow = ResponseFlag.UPSTREAM_OVERFLOW
        if active >= max(self._ratio * cluster.active_requests, self._min_concurrency):
            self._refuse(request, cluster, "budget", overflow, "retry_budget")
            return
        everywhere = (shared_counter(f"retry/{cluster.name}/active")
                      if self._workers else None)
        elsewhere = everywhere.total - everywhere.mine if everywhere is not None else 0
        if retries.max_active is not None and active + elsewhere >= retries.max_active:
            self._refuse(request, cluster, "max_retries", overflow, "max_retries")
            return
        delay = backoff(attempt.number, self._base, self._cap)
        if attempt.status in (503, 429):
            assert attempt.response is not None
            asked = retry_after(attempt.response.headers.get("retry-after"))
            if asked is not None:
                if asked > self._max_retry_after:
                    request.log["retry"] = f"Retry-After {asked:g}s exceeds max_retry_after"
                    return
                delay = asked
        if state is _IDLE:
            state = request.stash[_STATE] = _State()
        retries.begin()
        state.counted = cluster
        if everywhere is not None:
            everywhere.add(1)
            state.everywhere = everywhere
        self._inc(RETRY_ATTEMPTS, request.cluster)
        attempt.retry(delay)

    def on_complete(
        self, request: Request, response: Response | None, flag: ResponseFlag | None
    ) -> None:
        state = request.stash.get(_STATE, None)
        # The core may refuse a retry we asked for (deadline, body not replayable).
        if state is not None and (state.counted is not None or state.everywhere is not None):
            state.release()

    # helpers -------------------------------------------------------------------------
    def _refuse(
        self,
        request: Request,
        cluster: ClusterView,
        reason: str,
        flag: ResponseFlag,
        overflow: str | None = None,
    ) -> None:
        request.add_flag(flag)
        request.log["retry"] = f"not retried: {reason}"
        if overflow is not None:
            cluster.count_overflow(overflow)
        self._inc(RETRY_OVERFLOW, request.cluster, reason)

    def _inc(self, family: Counter, *labels: str) -> None:
        # labels() takes a lock and builds a tuple: keep the children already used.
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        child.inc()
