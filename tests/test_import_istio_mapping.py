"""What `sidemesh import istio` makes of each Istio field: the configs it writes for
small resources, field by field (docs/istio.md has the table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidemesh.tools.cli import main

RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""
ENDPOINTS = ["--endpoint", "reviews/v1=127.0.0.1:9001", "--endpoint",
             "reviews/v2=127.0.0.1:9002,127.0.0.1:9012", "--endpoint",
             "reviews/v3=127.0.0.1:9003"]


class Imported:
    def __init__(self, code: int, lost: list[str], err: str, out: Path) -> None:
        self.code, self.lost, self.err = code, lost, err
        self.configs = {p.stem: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}

    def listener(self, service: str, name: str = "outbound") -> dict[str, Any]:
        return next(lst for lst in self.configs[service]["listeners"] if lst["name"] == name)

    def route(self, service: str, name: str, listener: str = "outbound") -> dict[str, Any]:
        return next(r for r in self.listener(service, listener)["routes"] if r["name"] == name)

    def cluster(self, service: str, name: str) -> dict[str, Any]:
        return next(c for c in self.configs[service]["clusters"] if c["name"] == name)

    def chain(self, service: str, route: str) -> dict[str, Any]:
        return {e["name"]: e.get("config", e) for e in
                self.route(service, route).get("plugins", [])}


@pytest.fixture
def istio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(text: str, *args: str, partial: bool = True) -> Imported:
        source = tmp_path / "in.yaml"
        source.write_text(text)
        out = tmp_path / "out"
        code = main(["import", "istio", str(source), "--out", str(out),
                     *(["--allow-partial"] if partial else []), *args])
        captured = capsys.readouterr()
        return Imported(code, captured.out.splitlines(), captured.err, out)

    return run


def vs(http: str, hosts: str = "[reviews]", extra: str = "") -> str:
    return (f"{RULES}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: reviews}}\nspec:\n  hosts: {hosts}\n{extra}  http:\n{http}")


def test_matches_in_order_one_route_each_with_every_host_name(istio: Any) -> None:
    result = istio(vs("""\
  - name: canary
    match:
    - {headers: {end-user: {exact: jason}}, uri: {prefix: /reviews}}
    - {method: {regex: "GET|HEAD"}, uri: {exact: /health}, ignoreUriCase: true}
    - {withoutHeaders: {x-debug: {}}, headers: {x-test: {}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""), *ENDPOINTS, "--service", "productpage", partial=False)
    assert result.code == 0 and result.lost == []
    routes = result.listener("productpage")["routes"]
    reviews = [r for r in routes if r["cluster"] == "reviews"]
    assert [(r["name"], r["match"]) for r in reviews[:4]] == [
        ("canary-0", {"host": "reviews", "prefix": "/reviews",
                      "headers": {"end-user": {"exact": "jason"}}}),
        ("canary-1", {"host": "reviews", "regex": "(?i)/health", "methods": ["GET", "HEAD"]}),
        ("canary-2", {"host": "reviews", "headers": {"x-test": {"present": True},
                                                     "x-debug": {"present": False}}}),
        ("reviews-1", {"host": "reviews"}),
    ]
    # The same rules for each name the host has (Envoy's virtual-host domains).
    assert [r["match"]["host"] for r in reviews[::4]] == [
        "reviews", "reviews.default.svc.cluster.local", "reviews.default.svc",
        "reviews.default"]
    assert result.chain("productpage", "canary-0")["split"] == {"destinations": [
        {"subset": "v2"}]}
    assert result.route("productpage", "canary-0")["timeout"] == "0s"  # Istio: none


def test_weights_mirror_timeout_and_another_host(istio: Any) -> None:
    result = istio(vs("""\
  - timeout: 2.5s
    route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v2}, weight: 20}
    - {destination: {host: ratings}, weight: 5}
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 12.5}
"""), *ENDPOINTS, "--service", "productpage")
    route = result.route("productpage", "reviews-0")
    assert route["timeout"] == "2.5s" and route["cluster"] == "reviews"
    assert result.chain("productpage", "reviews-0")["split"] == {
        "destinations": [{"subset": "v1", "weight": 75}, {"subset": "v2", "weight": 20},
                         {"cluster": "ratings", "weight": 5}],
        "mirror": {"subset": "v3", "percent": 12.5}}
    reviews = result.cluster("productpage", "reviews")
    assert reviews["endpoints"] == [
        {"address": "127.0.0.1:9001", "labels": {"version": "v1"}},
        {"address": "127.0.0.1:9002", "labels": {"version": "v2"}},
        {"address": "127.0.0.1:9012", "labels": {"version": "v2"}},
        {"address": "127.0.0.1:9003", "labels": {"version": "v3"}}]
    assert result.cluster("productpage", "ratings")["endpoints"] == [
        {"address": "ratings.default.svc.cluster.local:80"}]


@pytest.mark.parametrize(("retries", "expected", "lost"), [
    (None, None, []),  # Istio's default policy: the listener's entry
    ("{attempts: 0}", {"name": "retry", "enabled": False}, []),
    ("{attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error,connect-failure,"
     "refused-stream,503,504,unavailable'}",
     {"attempts": 3, "per_try_timeout": "2s",
      "retry_on": ["gateway-error", "connect-failure", "reset", "retriable-status-codes"],
      "retriable_status_codes": [503, 504], "retry_non_idempotent": True}, []),
    ("{attempts: 4, backoff: 50ms}",
     {"attempts": 4, "retry_on": ["connect-failure", "reset", "retriable-status-codes"],
      "retriable_status_codes": [503], "retry_non_idempotent": True,
      "base_interval": "50ms", "max_interval": "500ms"}, []),
    ("{attempts: 12, retryOn: '5xx,retriable-headers,reset-before-request'}",
     {"attempts": 10, "retry_on": ["5xx", "reset"], "retriable_status_codes": [],
      "retry_non_idempotent": True},
     ["spec.http[0].retries.attempts: 12 retries: sidemesh makes at most 10",
      "spec.http[0].retries.retryOn: retriable-headers: sidemesh retries on",
      "spec.http[0].retries.retryOn: reset-before-request is retried as reset"]),
])
def test_retries_and_retry_on_conditions(istio: Any, retries: str | None,
                                         expected: dict[str, Any] | None,
                                         lost: list[str]) -> None:
    line = f"    retries: {retries}\n" if retries else ""
    result = istio(vs(f"  - route: [{{destination: {{host: reviews}}}}]\n{line}"),
                   "--service", "productpage")
    listener = result.listener("productpage")
    assert listener["plugins"] == [{"name": "retry", "config": {
        "attempts": 2, "retry_on": ["connect-failure", "reset", "retriable-status-codes"],
        "retriable_status_codes": [503], "retry_non_idempotent": True}}]
    entry = result.chain("productpage", "reviews-0").get("retry")
    assert entry == expected
    for reason in lost:
        assert any(reason in line for line in result.lost), (reason, result.lost)
    assert len(result.lost) == len(lost)


def test_destination_rule_policy_on_every_route_to_the_host(istio: Any) -> None:
    result = istio("""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 5, maxRetries: 7}
    outlierDetection: {consecutiveGatewayErrors: 3, interval: 1m, baseEjectionTime: 2m,
                       maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL}
    retryBudget: {percent: {value: 25}, minRetryConcurrency: 4}
""", "--service", "productpage", partial=False)
    assert result.code == 0 and result.lost == []
    cluster = result.cluster("productpage", "reviews")
    assert (cluster["load_balancer"], cluster["connect_timeout"]) == ("random", "30ms")
    chain = result.chain("productpage", "reviews")
    assert list(chain) == ["retry", "circuit", "mtls"]
    assert chain["circuit"] == {
        "max_connections": 100, "max_pending_requests": 5, "max_requests": 1_000_000,
        "max_retries": 7, "consecutive_5xx": 5, "consecutive_gateway_failure": 3,
        "interval": "1m", "base_ejection_time": "2m", "max_ejection_percent": 50}
    assert chain["mtls"] == {"expect": "spiffe://cluster.local/ns/default/sa/reviews"}
    assert chain["retry"]["budget"] == {"ratio": 0.25, "min_concurrency": 4}


def test_a_connection_pool_alone_keeps_outlier_detection_off(istio: Any) -> None:
    result = istio("""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 10}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy: {outlierDetection: {consecutiveErrors: 2}}
""", "--service", "productpage")
    assert result.chain("productpage", "ratings")["circuit"] == {
        "max_connections": 1_000_000, "max_pending_requests": 1_000_000, "max_requests": 10,
        "max_retries": 1_000_000, "consecutive_5xx": None}
    details = result.chain("productpage", "details")["circuit"]
    assert (details["consecutive_5xx"], details["consecutive_gateway_failure"]) == (None, 2)
    assert result.cluster("productpage", "ratings") == {
        "name": "ratings", "connect_timeout": "10s", "load_balancer": "least_request",
        "endpoints": [{"address": "ratings.default.svc.cluster.local:80"}]}


def test_h2_upgrade_policy_makes_the_cluster_speak_http2(istio: Any) -> None:
    result = istio("""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE,
                                           useClientProtocol: true}}}
""", "--service", "productpage")
    assert result.cluster("productpage", "ratings")["protocol"] == "http2"
    assert "protocol" not in result.cluster("productpage", "details")
    assert [loss for loss in result.lost if "useClientProtocol" in loss]


def test_service_entry_endpoints_and_ports(istio: Any) -> None:
    result = istio("""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments}
spec:
  hosts: [payments.example.com]
  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9090}]
  resolution: STATIC
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
  - {address: 10.1.0.2, ports: {http: 9191}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments.example.com
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments.example.com]
  http: [{route: [{destination: {host: payments.example.com, subset: v2}}]}]
""", "--service", "web", partial=False)
    assert result.code == 0 and result.lost == []
    assert result.cluster("web", "payments.example.com")["endpoints"] == [
        {"address": "10.1.0.1:9090", "labels": {"version": "v1"}},
        {"address": "10.1.0.2:9191", "labels": {"version": "v2"}}]
    assert result.route("web", "payments-0")["match"] == {"host": "payments.example.com"}
    assert set(result.configs) == {"web"}  # an external host gets no sidecar of its own


def test_source_labels_export_to_and_namespaces_choose_the_clients(istio: Any) -> None:
    result = istio("""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: prod}
spec:
  hosts: [ratings]
  exportTo: ["."]
  http:
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: ratings, port: {number: 9080}}}]
""", "--service", "reviews.prod", "--service", "web")
    prod = [r["name"] for r in result.listener("reviews.prod")["routes"]]
    assert prod == ["ratings-0", "ratings-0.h1", "ratings-0.h2", "ratings-0.h3"]
    assert result.route("reviews.prod", "ratings-0")["match"] == {"host": "ratings"}
    # ratings itself is not the source the rule names; web is in another namespace.
    assert "outbound" not in [lst["name"] for lst in result.configs["ratings.prod"]["listeners"]]
    assert "outbound" not in [lst["name"] for lst in result.configs["web"]["listeners"]]
    assert result.cluster("reviews.prod", "ratings.prod")["endpoints"] == [
        {"address": "ratings.prod.svc.cluster.local:9080"}]


def test_peer_authentication_strict_and_auto_mtls(istio: Any) -> None:
    result = istio(RULES + """\
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec: {selector: {matchLabels: {app: legacy}}, mtls: {mode: PERMISSIVE}}
""", *ENDPOINTS, "--service", "productpage", partial=False)
    assert result.code == 0
    assert result.listener("reviews", "inbound")["plugins"] == [
        {"name": "mtls", "config": {"mode": "strict"}}]
    assert result.listener("legacy", "inbound")["plugins"] == [
        {"name": "mtls", "config": {"mode": "permissive"}}]
    # A client sends mTLS to a sidecar that accepts it (Istio's auto mTLS).
    assert result.chain("productpage", "reviews")["mtls"] == {
        "expect": "spiffe://cluster.local/ns/default/sa/reviews"}


AUTHZ = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/reviews/admin*"]}}]}]
"""


def test_authorization_policy_principals_paths_methods(istio: Any) -> None:
    result = istio(AUTHZ, partial=False)
    assert result.code == 0 and result.lost == []
    inbound = result.listener("reviews", "inbound")
    assert inbound["plugins"] == [{"name": "mtls", "config": {
        "mode": "permissive", "allow": ["spiffe://cluster.local/ns/default/sa/productpage"]}}]
    decisions = [(r["match"], "plugins" in r) for r in inbound["routes"]]
    assert decisions == [
        ({"prefix": "/reviews/admin", "methods": ["GET"]}, True),
        ({"prefix": "/reviews/admin"}, True),
        ({"prefix": "/reviews/", "methods": ["GET"]}, False),
        ({"prefix": "/reviews/"}, True),
        ({"prefix": "/", "methods": ["GET"]}, True),
        ({"prefix": "/"}, True),
    ]
    assert all(r["cluster"] == "local" for r in inbound["routes"])
    assert inbound["routes"][1]["plugins"] == [{"name": "mtls", "config": {"allow": []}}]


def test_authorization_that_cannot_be_expressed_is_denied_and_reported(istio: Any) -> None:
    result = istio("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings}
spec:
  selector: {matchLabels: {app: ratings}}
  rules:
  - to: [{operation: {paths: ["/public/*"]}}]
  - from: [{source: {principals: ["cluster.local/ns/default/sa/reviews"]}}]
    to: [{operation: {paths: ["/private/*"]}}]
  - from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]
  - when: [{key: "request.headers[x-id]", values: ["1"]}]
""")
    routes = result.listener("ratings", "inbound")["routes"]
    assert [(r["match"], "plugins" in r) for r in routes] == [
        ({"prefix": "/private/"}, True), ({"prefix": "/public/"}, False), ({"prefix": "/"}, True)]
    assert len(result.lost) == 3
    assert any("spec.rules[2].from[0].source.ipBlocks: sidemesh authorises by principal or "
               "namespace alone: the source is left out (allowing less)" in x
               for x in result.lost)
    assert any("spec.rules[3].when: sidemesh has no request conditions: the rule is left out"
               in x for x in result.lost)
    assert any(x.startswith("service ratings: requests matching {'prefix': '/private/'} are "
                            "denied to everyone: Istio allows "
                            "spiffe://cluster.local/ns/default/sa/reviews there")
               for x in result.lost)


def test_gateway_serves_the_routes_bound_to_it(istio: Any) -> None:
    text = (Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "istio"
            / "bookinfo-networking" / "bookinfo-gateway.yaml")
    if not text.exists():
        pytest.skip("conformance data not present")
    result = istio(text.read_text(), partial=False)
    assert result.code == 0 and set(result.configs) == {"bookinfo-gateway", "productpage"}
    (listener,) = result.configs["bookinfo-gateway"]["listeners"]
    assert listener["address"] == "0.0.0.0:8080"
    assert [(r["match"], r["cluster"]) for r in listener["routes"]] == [
        ({"path": "/productpage"}, "productpage"), ({"prefix": "/static"}, "productpage"),
        ({"path": "/login"}, "productpage"), ({"path": "/logout"}, "productpage"),
        ({"prefix": "/api/v1/products"}, "productpage")]
    # Bound to the gateway only: sidecars keep Istio's default route to productpage.
    assert result.route("productpage", "productpage")["match"] == {"host": "productpage"}
