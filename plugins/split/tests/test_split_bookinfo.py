"""Istio's bookinfo traffic-shifting samples, converted into split configs: the share
each destination gets, and header routing in front of a split.

Sizes and bounds: the done-criterion is "within 1.5 percentage points of the weight
over 10,000 requests". That is checked twice in-process, where it is fast: the pure
chooser over 100,000 draws, and the real policy objects (``SplitPolicy`` compiled from
a config as a sidecar compiles it, with the config's clusters; an endpoint drawn at
random among those its upstream-selection hook keeps) over 10,000 requests. Through a
real sidecar to real upstream servers each case sends 2,000 requests (a few seconds on
a 2-core machine) and allows 3 percentage points: for a 50/50 split one standard
deviation is 1.1 points at that size. The random module is seeded
per case so a run is reproducible; the seed picks a sample, it does not shape it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidemesh import testing
from sidemesh_split import SplitPolicy, Weights, choose

BOOKINFO = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "conformance" / "istio"
    / "bookinfo-networking"
)
WEIGHTED = [
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-reviews-50-v3.yaml",
    "virtual-service-reviews-v2-v3.yaml",
]
#: bookinfo has no three-way split; this one stands for "a 3-way split".
THREE_WAY = [{"subset": "v1", "weight": 70}, {"subset": "v2", "weight": 20},
             {"subset": "v3", "weight": 10}]


def virtual_service_routes(path: Path) -> list[dict[str, Any]]:
    """The ``http`` routes of an Istio VirtualService as sidemesh routes, each with a
    split: ``match[].headers`` become route header matches, ``route[]`` destinations
    become split destinations (a subset of the VirtualService's host, or another
    cluster), an omitted weight is Istio's 100."""
    if not path.is_file():
        pytest.skip(f"bookinfo samples not found at {path}")
    (service,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    host = service["spec"]["hosts"][0]
    routes = []
    for n, http in enumerate(service["spec"]["http"]):
        match: dict[str, Any] = {"host": host, "prefix": "/"}
        for condition in http.get("match", []):
            match["headers"] = {name: dict(rule) for name, rule in condition["headers"].items()}
        destinations = []
        for item in http["route"]:
            target = item["destination"]
            destination: dict[str, Any] = {"weight": item.get("weight", 100)}
            if target["host"] != host:
                destination["cluster"] = target["host"]
            if "subset" in target:
                destination["subset"] = target["subset"]
            destinations.append(destination)
        routes.append({"name": f"{host}-{n}", "match": match, "cluster": host,
                       "plugins": [{"name": "split", "config": {"destinations": destinations}}]})
    return routes


def cases() -> list[tuple[str, list[dict[str, Any]]]]:
    found = []
    for name in WEIGHTED:
        path = BOOKINFO / name
        if path.is_file():
            (route,) = virtual_service_routes(path)
            found.append((name, route["plugins"][0]["config"]["destinations"]))
    return [*found, ("three-way 70/20/10", THREE_WAY)]


def test_the_samples_are_there() -> None:
    if not BOOKINFO.is_dir():
        pytest.skip(f"bookinfo samples not found at {BOOKINFO}")
    assert [n for n, _ in cases()] == [*WEIGHTED, "three-way 70/20/10"]
    assert dict(cases())["virtual-service-reviews-90-10.yaml"] == [
        {"weight": 90, "subset": "v1"}, {"weight": 10, "subset": "v2"}]


def expected_shares(destinations: list[dict[str, Any]]) -> dict[str, float]:
    total = sum(d["weight"] for d in destinations)
    shares: Counter[str] = Counter()
    for d in destinations:
        shares[d["subset"]] += 100.0 * d["weight"] / total
    return dict(shares)


def assert_shares(seen: Counter[str], destinations: list[dict[str, Any]], bound: float) -> None:
    total = sum(seen.values())
    got = {k: 100.0 * v / total for k, v in seen.items()}
    for subset, share in expected_shares(destinations).items():
        assert abs(got.get(subset, 0.0) - share) <= bound, (subset, got, share)
    assert set(got) <= set(expected_shares(destinations)), got


@pytest.fixture
def seeded(request: pytest.FixtureRequest) -> Iterator[None]:
    random.seed(request.node.name)
    try:
        yield
    finally:
        random.seed()


@pytest.mark.parametrize(("name", "destinations"), cases(), ids=[n for n, _ in cases()])
def test_pure_chooser_100k_draws(name: str, destinations: list[dict[str, Any]],
                                 seeded: None) -> None:
    weights = Weights.of({"destinations": destinations})
    seen = Counter(destinations[weights.pick()]["subset"] for _ in range(100_000))
    assert_shares(seen, destinations, 1.5)


@pytest.mark.parametrize(("name", "destinations"), cases(), ids=[n for n, _ in cases()])
def test_sticky_keys_spread_like_the_weights(name: str, destinations: list[dict[str, Any]]
                                             ) -> None:
    config = {"destinations": destinations}
    seen = Counter(destinations[choose(config, f"user-{n}")]["subset"] for n in range(100_000))
    assert_shares(seen, destinations, 1.5)


def reviews_doc(routes: list[dict[str, Any]], addresses: dict[str, str]) -> dict[str, Any]:
    return {
        "node": {"service": "productpage"},
        "clusters": [{
            "name": "reviews",
            "connect_timeout": "1s",
            "endpoints": [{"address": a, "labels": {"version": v}} for v, a in addresses.items()],
            "subsets": [{"name": v, "labels": {"version": v}} for v in addresses],
        }],
        "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "routes": routes}],
    }


def case_routes() -> list[dict[str, Any]]:
    return [
        {"name": f"case-{n}", "match": {"prefix": f"/case-{n}/"}, "cluster": "reviews",
         "plugins": [{"name": "split", "config": {"destinations": destinations}}]}
        for n, (_, destinations) in enumerate(cases())
    ]


@pytest.mark.parametrize("index", range(len(cases())), ids=[n for n, _ in cases()])
def test_policy_objects_10k_requests(index: int, seeded: None) -> None:
    """The real policy compiled from a config: its request hook chooses, its
    upstream-selection hook narrows the cluster, one of the endpoints it keeps is drawn
    (which one does not matter: a subset's endpoints share its version)."""
    addresses = {"v1": "127.0.0.1:9081", "v2": "127.0.0.1:9082", "v3": "127.0.0.1:9083"}
    compiled = testing.compile_config(reviews_doc(case_routes(), addresses))
    (policy,) = compiled.policies("outbound", f"case-{index}")
    assert isinstance(policy, SplitPolicy)
    cluster = compiled.cluster("reviews")
    seen: Counter[str] = Counter()
    for _ in range(10_000):
        request = testing.make_request(host="reviews")
        assert policy.on_request(request) is None
        endpoint = random.choice(policy.select_upstream(request, cluster.available()))
        seen[endpoint.labels["version"]] += 1
    assert_shares(seen, cases()[index][1], 1.5)


@pytest.fixture(scope="module")
def reviews() -> Iterator[dict[str, testing.Upstream]]:
    servers = {v: testing.Upstream(
                   lambda _, v=v: testing.Reply(body=v.encode()),  # type: ignore[misc]
                   name=v)
               for v in ("v1", "v2", "v3")}
    for server in servers.values():
        server.__enter__()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def sidecar(reviews: dict[str, testing.Upstream]) -> Iterator[testing.RunningSidecar]:
    addresses = {v: up.address for v, up in reviews.items()}
    routes = case_routes()
    jason = BOOKINFO / "virtual-service-reviews-test-v2.yaml"
    if jason.is_file():
        default = virtual_service_routes(BOOKINFO / "virtual-service-reviews-90-10.yaml")[0]
        routes = [virtual_service_routes(jason)[0], *routes, {**default, "name": "reviews-90-10"}]
    with testing.running_sidecar(reviews_doc(routes, addresses)) as running:
        yield running


def counts(client: httpx.Client, url: str, n: int, headers: dict[str, str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        seen[response.text] += 1
    return seen


@pytest.mark.parametrize("index", range(len(cases())), ids=[n for n, _ in cases()])
def test_through_the_sidecar_2000_requests(index: int, sidecar: testing.RunningSidecar,
                                           seeded: None) -> None:
    with httpx.Client(base_url=sidecar.url("outbound"), timeout=5) as client:
        seen = counts(client, f"/case-{index}/reviews/1", 2000, {})
    assert_shares(seen, cases()[index][1], 3.0)


def test_end_user_jason_goes_to_v2_everyone_else_90_10(sidecar: testing.RunningSidecar,
                                                       seeded: None) -> None:
    """bookinfo's reviews-test-v2 (end-user: jason -> v2) in front of the 90/10 split."""
    if not (BOOKINFO / "virtual-service-reviews-test-v2.yaml").is_file():
        pytest.skip(f"bookinfo samples not found at {BOOKINFO}")
    with httpx.Client(base_url=sidecar.url("outbound"), timeout=5) as client:
        assert counts(client, "/reviews/1", 200, {"host": "reviews", "end-user": "jason"}) == \
            Counter({"v2": 200})
        others = counts(client, "/reviews/1", 2000, {"host": "reviews", "end-user": "bob"})
        anonymous = counts(client, "/reviews/1", 200, {"host": "reviews"})
    assert_shares(others + anonymous, [{"subset": "v1", "weight": 90},
                                       {"subset": "v2", "weight": 10}], 3.0)
