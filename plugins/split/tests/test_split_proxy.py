"""A split in a running sidecar with real upstream servers: the choice holds for every
retry, sticky keys land where ``choose`` says on every sidecar, whole clusters as
destinations, new weights on kept-alive connections, and metrics."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from sidemesh import Attempt, EndpointView, Policy, Request, Response, hookimpl, testing
from sidemesh_split import choose


class AvoidingRetry(Policy):
    """A minimal retry: another attempt on a 503, avoiding hosts already tried (as the
    retry plugin does), so the split's narrowing is what keeps retries in a subset."""

    name = "again"
    schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}

    def on_request(self, request: Request) -> Response | None:
        request.retry_buffer_limit = 1 << 20
        return None

    def select_upstream(self, request: Request, endpoints: Sequence[EndpointView]
                        ) -> Sequence[EndpointView]:
        rest = [e for e in endpoints if e not in request.tried]
        return rest or endpoints

    def on_response(self, request: Request, attempt: Attempt) -> None:
        if attempt.status == 503 and attempt.number < 3:
            attempt.retry()


class TestPolicies:
    @hookimpl
    def sidemesh_policies(self) -> list[type[Policy]]:
        return [AvoidingRetry]


EXTRA = [TestPolicies()]


def named(name: str, status: int = 200) -> testing.Upstream:
    return testing.Upstream(lambda _: testing.Reply(status=status, body=name.encode()), name=name)


@pytest.fixture
def servers() -> Iterator[dict[str, testing.Upstream]]:
    """v1 has a failing host (v1-bad, 503) and a good one; v2 and ratings are good."""
    made = {"v1-bad": named("v1-bad", 503), "v1-good": named("v1-good"), "v2": named("v2"),
            "ratings": named("ratings")}
    for server in made.values():
        server.__enter__()
    try:
        yield made
    finally:
        for server in made.values():
            server.__exit__(None, None, None)


def doc(servers: dict[str, testing.Upstream], plugins: list[dict[str, Any]],
        v1: Sequence[str] = ("v1-bad", "v1-good")) -> dict[str, Any]:
    endpoints = [{"address": servers[n].address, "labels": {"version": "v1"}} for n in v1]
    endpoints.append({"address": servers["v2"].address, "labels": {"version": "v2"}})
    return {
        "node": {"service": "productpage"},
        "clusters": [
            {"name": "reviews", "connect_timeout": "1s", "endpoints": endpoints,
             "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                         {"name": "v2", "labels": {"version": "v2"}}]},
            {"name": "ratings", "connect_timeout": "1s",
             "endpoints": [{"address": servers["ratings"].address}]},
        ],
        "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "routes": [
            {"name": "reviews", "match": {"prefix": "/"}, "cluster": "reviews",
             "plugins": plugins},
        ]}],
    }


def split(*destinations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "split", "config": {"destinations": list(destinations), **extra}}


def attempts_by_request(servers: dict[str, testing.Upstream]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for name, server in servers.items():
        for request in server.requests:
            seen[request.headers["x-request-id"]].append(name)
    return seen


def test_every_retry_stays_in_the_chosen_subset(servers: dict[str, testing.Upstream]) -> None:
    config = doc(servers, [{"name": "again"}, split({"subset": "v1", "weight": 50},
                                                    {"subset": "v2", "weight": 50})])
    with testing.running_sidecar(config, EXTRA) as sc, httpx.Client(base_url=sc.url("outbound"),
                                                            timeout=5) as client:
        answers = Counter(client.get("/r").text for _ in range(200))
    # v1-bad's 503 is always retried onto v1-good, never onto v2: every request is
    # answered, and each request's attempts stayed in one subset.
    assert set(answers) == {"v1-good", "v2"}
    assert 60 < answers["v2"] < 140
    for attempts in attempts_by_request(servers).values():
        versions = {name.split("-")[0] for name in attempts}
        assert len(versions) == 1, attempts
    assert servers["v1-bad"].requests, "the failing host was chosen at least once"


def test_a_subset_whose_hosts_all_fail_never_spills_into_another(
    servers: dict[str, testing.Upstream],
) -> None:
    """The retry avoids the tried host and offers only v2; the split still insists on
    v1 (Envoy's subset load balancer does not fall back to other subsets)."""
    config = doc(servers, [{"name": "again"}, split({"subset": "v1", "weight": 1},
                                                    {"subset": "v2", "weight": 0})],
                 v1=("v1-bad",))
    with testing.running_sidecar(config, EXTRA) as sc:
        response = httpx.get(sc.url("outbound") + "/r", timeout=5)
    assert response.status_code == 503
    assert [r.method for r in servers["v1-bad"].requests] == ["GET"] * 3
    assert servers["v2"].requests == []


def test_with_the_retry_plugin_on_the_same_route(servers: dict[str, testing.Upstream]) -> None:
    if not testing.installed("retry"):
        pytest.skip("sidemesh-retry is not installed")
    config = doc(servers, [
        {"name": "retry", "config": {"attempts": 3, "retry_on": ["gateway-error"],
                                     "base_interval": "1ms", "max_interval": "2ms"}},
        split({"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}),
    ])
    with testing.running_sidecar(config) as sc, httpx.Client(base_url=sc.url("outbound"),
                                                      timeout=5) as client:
        answers = Counter(client.get("/r").text for _ in range(100))
    assert set(answers) == {"v1-good", "v2"}
    for attempts in attempts_by_request(servers).values():
        assert len({name.split("-")[0] for name in attempts}) == 1, attempts


def test_with_retry_and_circuit_on_the_same_route(servers: dict[str, testing.Upstream]) -> None:
    """SPEC's chain (retry, circuit, split): the failing v1 host is retried within v1,
    then ejected; the split keeps working on what is left of each subset."""
    if not (testing.installed("retry") and testing.installed("circuit")):
        pytest.skip("sidemesh-retry or sidemesh-circuit is not installed")
    config = doc(servers, [
        {"name": "retry", "config": {"attempts": 3, "retry_on": ["gateway-error"],
                                     "base_interval": "1ms", "max_interval": "2ms"}},
        {"name": "circuit", "config": {"consecutive_5xx": 2, "base_ejection_time": "30s",
                                       "max_ejection_percent": 50}},
        split({"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}),
    ])
    with testing.running_sidecar(config) as sc, httpx.Client(base_url=sc.url("outbound"),
                                                      timeout=5) as client:
        answers = Counter(client.get("/r").text for _ in range(200))
        bad = next(e for e in sc.cluster("reviews").endpoints
                   if e.address == servers["v1-bad"].address)
        assert bad.ejected
    assert set(answers) == {"v1-good", "v2"}
    assert 60 < answers["v2"] < 140
    assert 1 <= len(servers["v1-bad"].requests) <= 3
    for attempts in attempts_by_request(servers).values():
        assert len({name.split("-")[0] for name in attempts}) == 1, attempts


def test_sticky_keys_land_where_choose_says_on_every_sidecar(
    servers: dict[str, testing.Upstream],
) -> None:
    entry = split({"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50},
                  hash_on="header:end-user")
    config = doc(servers, [entry], v1=("v1-good",))
    users = [f"user-{n}" for n in range(60)]
    landed: list[dict[str, str]] = []
    with testing.running_sidecar(config) as first, testing.running_sidecar(config) as second:
        for sc in (first, second, first):
            with httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
                landed.append({u: client.get("/r", headers={"end-user": u}).text
                               for u in users})
    assert landed[0] == landed[1] == landed[2]
    names = ["v1-good", "v2"]
    assert landed[0] == {u: names[choose(entry["config"], u)] for u in users}
    assert set(landed[0].values()) == {"v1-good", "v2"}


def test_a_cookie_makes_the_split_sticky_and_no_key_is_random(
    servers: dict[str, testing.Upstream],
) -> None:
    entry = split({"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50},
                  hash_on="cookie:user")
    with testing.running_sidecar(doc(servers, [entry], v1=("v1-good",))) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        for user in ("jason", "alice", "bob"):
            answers = {client.get("/r", headers={"cookie": f"a=1; user={user}"}).text
                       for _ in range(20)}
            assert len(answers) == 1
        anonymous = Counter(client.get("/r").text for _ in range(200))
    assert set(anonymous) == {"v1-good", "v2"}


def test_another_cluster_and_a_subset_of_another_cluster(
    servers: dict[str, testing.Upstream],
) -> None:
    with testing.running_sidecar(doc(servers, [split({"cluster": "ratings", "weight": 50},
                                             {"subset": "v2", "weight": 50})])) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5) as client:
        answers = Counter(client.get("/r").text for _ in range(200))
    assert set(answers) == {"ratings", "v2"}
    assert 60 < answers["ratings"] < 140

    config = doc(servers, [split({"cluster": "reviews", "subset": "v2"})])
    config["listeners"][0]["routes"][0]["cluster"] = "ratings"
    with testing.running_sidecar(config) as sc:
        assert httpx.get(sc.url("outbound") + "/r", timeout=5).text == "v2"


def test_new_weights_apply_at_once_on_a_kept_alive_connection(
    servers: dict[str, testing.Upstream],
) -> None:
    def weights(v1: int, v2: int) -> dict[str, Any]:
        return doc(servers, [split({"subset": "v1", "weight": v1},
                                   {"subset": "v2", "weight": v2})], v1=("v1-good",))

    with testing.running_sidecar(weights(100, 0)) as sc, \
            httpx.Client(base_url=sc.url("outbound"), timeout=5,
                         limits=httpx.Limits(max_connections=1)) as client:

        def batch() -> tuple[Counter[str], set[Any]]:
            answers: Counter[str] = Counter()
            ports = set()
            for _ in range(30):
                response = client.get("/r")
                answers[response.text] += 1
                ports.add(response.extensions["network_stream"].get_extra_info("client_addr"))
            return answers, ports

        before, ports_before = batch()
        sc.apply(weights(0, 100), version="v2")
        after, ports_after = batch()
        sc.apply(weights(1, 1), version="v3")
        mixed, ports_mixed = batch()
    assert before == Counter({"v1-good": 30})
    assert after == Counter({"v2": 30})
    assert set(mixed) == {"v1-good", "v2"}
    assert len(ports_before | ports_after | ports_mixed) == 1, "one kept-alive connection"


def metric(route: str, destination: str, name: str = "sidemesh_split_requests_total") -> float:
    value = REGISTRY.get_sample_value(
        name, {"listener": "outbound", "route": route, "destination": destination})
    return value or 0.0


def test_requests_are_counted_per_destination_once_per_request(
    servers: dict[str, testing.Upstream],
) -> None:
    before = {d: metric("reviews", d) for d in ("reviews/v1", "reviews/v2", "ratings")}
    config = doc(servers, [{"name": "again"}, split({"subset": "v1", "weight": 2},
                                                    {"subset": "v2", "weight": 1},
                                                    {"cluster": "ratings", "weight": 1})])
    with testing.running_sidecar(config, EXTRA) as sc, httpx.Client(base_url=sc.url("outbound"),
                                                            timeout=5) as client:
        answers = Counter(client.get("/r").text for _ in range(120))
    counted = {d: metric("reviews", d) - before[d] for d in before}
    assert counted == {"reviews/v1": answers["v1-good"], "reviews/v2": answers["v2"],
                       "ratings": answers["ratings"]}
    assert sum(counted.values()) == 120



def test_the_counts_go_on_across_a_reload(servers: dict[str, testing.Upstream]) -> None:
    # A reload makes new policies: they must add to the same series, never restart it
    # (a Prometheus counter that drops looks like a process restart to rate()).
    before = metric("reviews", "reviews/v2")
    only_v2 = doc(servers, [split({"subset": "v2", "weight": 1})])
    with testing.running_sidecar(only_v2) as sc, httpx.Client(base_url=sc.url("outbound"),
                                                               timeout=5) as client:
        assert [client.get("/r").text for _ in range(3)] == ["v2"] * 3
        sc.apply(doc(servers, [split({"subset": "v2", "weight": 2})]), version="v2")
        assert [client.get("/r").text for _ in range(4)] == ["v2"] * 4
    assert metric("reviews", "reviews/v2") - before == 7
    text = generate_latest(REGISTRY).decode()
    assert 'sidemesh_split_requests_total{destination="reviews/v2",listener="outbound",' \
           'route="reviews"}' in text
