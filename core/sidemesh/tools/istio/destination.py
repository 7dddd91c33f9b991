"""DestinationRule -> a host's traffic policy: subsets, load balancer, connection pool
and outlier detection (the circuit plugin), ISTIO_MUTUAL (the mtls plugin), retry
budget (the retry plugin)."""

from __future__ import annotations

from typing import Any

from sidemesh.api.spiffe import parse_spiffe_id
from sidemesh.tools.istio.model import TrafficPolicy
from sidemesh.tools.istio.resources import Report, Resource, duration, mapping

__all__ = ["UNLIMITED", "traffic_policy"]

#: The circuit plugin's largest limits, standing for Istio's unset ones (2^32-1).
UNLIMITED = 1_000_000

_LOAD_BALANCERS = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request",
                   "LEAST_CONN": "least_request", "RANDOM": "random"}


def _count(value: Any, resource: Resource, path: str, report: Report,
           zero_unlimited: bool = True) -> int | None:
    """A positive count (``None`` when unset, or 0 where Istio reads 0 as unset)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        report.loss(resource, path, f"{value!r} is not a count")
        return None
    if value == 0 and zero_unlimited:
        return None
    if value > UNLIMITED:
        report.note(resource, path, f"{value} is more than sidemesh's largest limit: "
                    f"{UNLIMITED} (no limit in practice)")
        return UNLIMITED
    return value


def _load_balancer(lb: Any, policy: TrafficPolicy, report: Report, path: str) -> None:
    if not isinstance(lb, dict):
        return
    resource = policy.resource
    simple = lb.get("simple")
    if simple in _LOAD_BALANCERS:
        policy.load_balancer = _LOAD_BALANCERS[simple]
    elif simple not in (None, "UNSPECIFIED"):
        report.loss(resource, f"{path}.simple", f"{simple}: sidemesh balances with "
                    "round_robin, least_request or random only; least_request (Istio's "
                    "default) is used")
    if "consistentHash" in lb:
        report.loss(resource, f"{path}.consistentHash", "sidemesh has no hash-based load "
                    "balancer: requests are not sticky to an endpoint (the split plugin's "
                    "hash_on keeps a subset sticky, not a host)")
    report.unknown(resource, path, lb, ("simple", "consistentHash"))


def _connection_pool(pool: Any, policy: TrafficPolicy, report: Report,
                     path: str) -> dict[str, Any]:
    if not isinstance(pool, dict):
        return {}
    resource = policy.resource
    tcp, http = mapping(pool.get("tcp")), mapping(pool.get("http"))
    limits: dict[str, Any] = {}
    for key, source, where in (("max_connections", tcp, "tcp.maxConnections"),
                               ("max_pending_requests", http, "http.http1MaxPendingRequests"),
                               ("max_requests", http, "http.http2MaxRequests"),
                               ("max_retries", http, "http.maxRetries")):
        value = _count(source.get(where.split(".")[1]), resource, f"{path}.{where}", report)
        if value is not None:
            limits[key] = value
    if "connectTimeout" in tcp:
        policy.connect_timeout = duration(tcp["connectTimeout"], resource,
                                          f"{path}.tcp.connectTimeout", report)
    report.unknown(resource, f"{path}.tcp", tcp, ("maxConnections", "connectTimeout"))
    if http.get("h2UpgradePolicy") == "UPGRADE":
        policy.protocol = "http2"
    if http.get("useClientProtocol"):
        report.loss(resource, f"{path}.http.useClientProtocol", "sidemesh speaks the "
                    "cluster's protocol (http1 unless h2UpgradePolicy: UPGRADE), whatever "
                    "the client spoke")
    for key, why in (("http2KeepAlive", "sidemesh sends no HTTP/2 keep-alive PINGs"),
                     ("maxConcurrentStreams", "sidemesh opens as many streams on a "
                      "connection as the upstream's SETTINGS allow")):
        if key in http:
            report.note(resource, f"{path}.http.{key}", f"no effect: {why}")
    report.unknown(resource, f"{path}.http", http, (
        "http1MaxPendingRequests", "http2MaxRequests", "maxRetries", "h2UpgradePolicy",
        "http2KeepAlive", "maxConcurrentStreams", "useClientProtocol"))
    report.unknown(resource, path, pool, ("tcp", "http"))
    return limits


def _outlier_detection(od: Any, policy: TrafficPolicy, report: Report,
                       path: str) -> dict[str, Any]:
    if not isinstance(od, dict):
        return {}
    resource = policy.resource
    # Envoy's defaults, which Istio keeps: 5 consecutive 5xx, gateway errors off.
    detection: dict[str, Any] = {"consecutive_5xx": 5, "consecutive_gateway_failure": None}
    if "consecutiveErrors" in od:
        # Deprecated; Istio enforces it on gateway errors only, 5xx off.
        detection["consecutive_gateway_failure"] = _count(
            od["consecutiveErrors"], resource, f"{path}.consecutiveErrors", report)
        detection["consecutive_5xx"] = None
    for key, istio in (("consecutive_5xx", "consecutive5xxErrors"),
                       ("consecutive_gateway_failure", "consecutiveGatewayErrors")):
        if istio in od:
            detection[key] = _count(od[istio], resource, f"{path}.{istio}", report)
    for key, istio in (("interval", "interval"), ("base_ejection_time", "baseEjectionTime")):
        if istio in od:
            value = duration(od[istio], resource, f"{path}.{istio}", report)
            if value is not None:
                detection[key] = value
    percent = od.get("maxEjectionPercent")
    if isinstance(percent, int) and not isinstance(percent, bool) and 0 <= percent <= 100:
        detection["max_ejection_percent"] = percent
    elif percent is not None:
        report.loss(resource, f"{path}.maxEjectionPercent", f"{percent!r} is not a percentage")
    if od.get("minHealthPercent"):
        report.loss(resource, f"{path}.minHealthPercent", "sidemesh keeps detecting whatever "
                    "the healthy share; with every endpoint ejected it uses them all (panic)")
    if od.get("splitExternalLocalOriginErrors"):
        report.loss(resource, f"{path}.splitExternalLocalOriginErrors", "sidemesh counts "
                    "connect failures, resets and timeouts with the 5xx answers")
    report.unknown(resource, path, od, (
        "consecutiveErrors", "consecutive5xxErrors", "consecutiveGatewayErrors", "interval",
        "baseEjectionTime", "maxEjectionPercent", "minHealthPercent",
        "splitExternalLocalOriginErrors"))
    return detection


def _tls(tls: Any, policy: TrafficPolicy, report: Report, path: str) -> None:
    if not isinstance(tls, dict):
        return
    resource = policy.resource
    mode = tls.get("mode", "DISABLE")
    if mode in ("ISTIO_MUTUAL", "DISABLE"):
        policy.tls = mode
    else:
        report.loss(resource, f"{path}.mode", f"{mode}: sidemesh originates TLS only as mTLS "
                    "between sidecars (ISTIO_MUTUAL); requests go in plain HTTP")
        return
    names = tls.get("subjectAltNames")
    if mode == "ISTIO_MUTUAL" and names:
        if len(names) == 1 and _is_spiffe(names[0]):
            policy.expect = names[0]
        else:
            report.loss(resource, f"{path}.subjectAltNames", "sidemesh verifies one SPIFFE ID "
                        "per upstream: the host's service identity is expected instead")
    if mode == "ISTIO_MUTUAL" and tls.get("sni"):
        report.loss(resource, f"{path}.sni", "sidemesh sends no SNI to sidecars")
    report.unknown(resource, path, tls, ("mode", "subjectAltNames", "sni"))


def _is_spiffe(value: Any) -> bool:
    try:
        return bool(parse_spiffe_id(str(value)).path)
    except ValueError:
        return False


def _retry_budget(budget: Any, policy: TrafficPolicy, report: Report, path: str) -> None:
    if not isinstance(budget, dict):
        return
    result: dict[str, Any] = {}
    percent = budget.get("percent")
    value = percent.get("value") if isinstance(percent, dict) else None
    if isinstance(value, int | float) and 0 <= value <= 100:
        result["ratio"] = value / 100
    concurrency = budget.get("minRetryConcurrency")
    if isinstance(concurrency, int) and 0 <= concurrency <= 100_000:
        result["min_concurrency"] = concurrency
    policy.retry_budget = result
    report.unknown(policy.resource, path, budget, ("percent", "minRetryConcurrency"))


def _policy(spec: Any, policy: TrafficPolicy, report: Report, path: str) -> None:
    if not isinstance(spec, dict):
        return
    resource = policy.resource
    _load_balancer(spec.get("loadBalancer"), policy, report, f"{path}.loadBalancer")
    circuit = _connection_pool(spec.get("connectionPool"), policy, report,
                               f"{path}.connectionPool")
    detection = _outlier_detection(spec.get("outlierDetection"), policy, report,
                                   f"{path}.outlierDetection")
    if circuit or "connectionPool" in spec or detection:
        # Whatever the rule leaves unset stays as Istio has it: no limit, no detection.
        policy.circuit = {"max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
                          "max_requests": UNLIMITED, "max_retries": UNLIMITED,
                          **circuit, "consecutive_5xx": None, **detection}
    _tls(spec.get("tls"), policy, report, f"{path}.tls")
    _retry_budget(spec.get("retryBudget"), policy, report, f"{path}.retryBudget")
    for i, _ in enumerate(spec.get("portLevelSettings") or []):
        report.loss(resource, f"{path}.portLevelSettings[{i}]", "sidemesh routes by host, not "
                    "by port: a policy for one port is not applied")
    report.unknown(resource, path, spec, (
        "loadBalancer", "connectionPool", "outlierDetection", "tls", "retryBudget",
        "portLevelSettings"))


def traffic_policy(resource: Resource, report: Report) -> TrafficPolicy:
    """The policy of a DestinationRule; what has no equivalent is reported."""
    spec = resource.spec
    policy = TrafficPolicy(resource)
    _policy(spec.get("trafficPolicy"), policy, report, "spec.trafficPolicy")
    for i, subset in enumerate(spec.get("subsets") or []):
        if not isinstance(subset, dict) or not isinstance(subset.get("name"), str):
            report.loss(resource, f"spec.subsets[{i}]", "a subset needs a name")
            continue
        labels = subset.get("labels") or {}
        policy.subsets[subset["name"]] = {str(k): str(v) for k, v in labels.items()}
        if subset.get("trafficPolicy"):
            report.loss(resource, f"spec.subsets[{i}].trafficPolicy", "sidemesh applies a "
                        "host's policy to all its subsets: the subset's own is not applied")
        report.unknown(resource, f"spec.subsets[{i}]", subset,
                       ("name", "labels", "trafficPolicy"))
    if spec.get("workloadSelector"):
        report.loss(resource, "spec.workloadSelector", "applied to every sidecar, not only "
                    "the selected workloads")
    export = spec.get("exportTo")
    if export and "*" not in export:
        report.loss(resource, "spec.exportTo", "sidemesh has no visibility rules for "
                    "destination policies: every namespace's sidecars get it")
    report.unknown(resource, "spec", spec, ("host", "trafficPolicy", "subsets",
                                            "workloadSelector", "exportTo"))
    return policy
