"""Building the typed config: defaults from the schemas, effective chains, durations,
files and digests."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import yaml

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import ConfigInvalid, build, config_digest, load_file, parse_yaml
from sidemesh.datapath.model import HeaderMatch

CONFORMANCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance"


@pytest.fixture(scope="module")
def registry(fake_policies: ModuleType) -> PluginRegistry:
    return PluginRegistry.load(extra_plugins=[fake_policies])


BASE = """
node: {service: productpage}
clusters:
  - name: reviews
    endpoints:
      - {address: "127.0.0.1:9081", labels: {version: v1}}
      - {address: "[::1]:9082", labels: {version: v2}}
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    plugins:
      - {name: faketracing, config: {sampling: 0.5}}
      - {name: fakeretry, config: {attempts: 1}}
      - {name: fakemtls}
    routes:
      - name: a
        cluster: reviews
        match: {host: reviews, headers: {X-User: {exact: jason}, x-debug: {present: false}}}
        plugins:
          - {name: fakesplit, config: {destinations: [{subset: v2, weight: 1}]}}
          - {name: fakeretry, config: {attempts: 4, budget: {ratio: 0.5}}}
          - {name: fakemtls, enabled: false}
      - name: b
        cluster: reviews
        timeout: 0s
        plugins:
          - {name: fakeretry, version: ">=1.0"}
"""


def test_defaults_are_filled_from_the_core_schema(registry: PluginRegistry) -> None:
    config = build(parse_yaml(BASE), registry)
    assert config.node.namespace == "default" and config.node.trust_domain == "cluster.local"
    assert config.node.spiffe_id == "spiffe://cluster.local/ns/default/sa/productpage"
    assert config.admin is None and config.control is None
    reviews = config.cluster("reviews")
    assert reviews.connect_timeout == 1.0 and reviews.load_balancer == "round_robin"
    assert [(e.host, e.port) for e in reviews.endpoints] == [("127.0.0.1", 9081), ("::1", 9082)]
    listener = config.listeners[0]
    assert (listener.host, listener.port) == ("127.0.0.1", 15001)
    route_a, route_b = listener.routes
    assert route_a.timeout == 15.0
    assert route_b.timeout is None  # 0s means no timeout
    assert route_a.match.headers == (
        HeaderMatch("x-user", "exact", "jason"), HeaderMatch("x-debug", "present", False))
    assert route_b.match == type(route_b.match)()


def test_effective_chain_order_override_and_disable(registry: PluginRegistry) -> None:
    config = build(parse_yaml(BASE), registry)
    listener = config.listeners[0]
    route_a, route_b = listener.routes
    # listener entries first, route override keeps the listener position, mtls disabled,
    # then the route's own entries.
    assert [(e.name, e.scope) for e in route_a.chain] == [
        ("faketracing", "listener"), ("fakeretry", "route"), ("fakesplit", "route")]
    retry = route_a.chain[1].config
    assert retry == {"attempts": 4, "per_try_timeout": "0s",
                     "retry_on": ["gateway-error", "reset"],
                     "budget": {"ratio": 0.5, "min_concurrency": 3}}
    assert route_a.chain[0].config == {"sampling": 0.5, "propagation": ["w3c"]}
    # a route entry without config keeps the listener's config, adding only the version
    names = [(e.name, e.scope, e.version) for e in route_b.chain]
    assert names == [("faketracing", "listener", None), ("fakeretry", "route", ">=1.0"),
                     ("fakemtls", "listener", None)]
    assert route_b.chain[1].config["attempts"] == 1
    assert [e.name for e in listener.chain] == ["faketracing", "fakeretry", "fakemtls"]
    assert listener.chain[2].config == {"mode": "strict", "allow": []}


def test_disabled_listener_entry_is_gone_from_listener_and_routes(
    registry: PluginRegistry
) -> None:
    doc = parse_yaml(BASE)
    doc["listeners"][0]["plugins"][0]["enabled"] = False
    config = build(doc, registry)
    assert "faketracing" not in [e.name for e in config.listeners[0].chain]
    assert "faketracing" not in [e.name for r in config.listeners[0].routes for e in r.chain]


def test_raw_keeps_the_document_as_written(registry: PluginRegistry) -> None:
    doc = parse_yaml(BASE)
    config = build(doc, registry)
    assert config.raw == doc
    assert "timeout" not in config.raw["listeners"][0]["routes"][0]


def test_load_file_and_unreadable_files(tmp_path: Path, registry: PluginRegistry) -> None:
    path = tmp_path / "sidemesh.yaml"
    path.write_text(BASE)
    assert load_file(path, registry).listeners[0].name == "outbound"
    with pytest.raises(ConfigInvalid, match="cannot read: No such file"):
        load_file(tmp_path / "missing.yaml", registry)
    with pytest.raises(ConfigInvalid, match="cannot read"):
        load_file(tmp_path, registry)


def test_digest_ignores_key_order_and_formatting() -> None:
    a = parse_yaml(BASE)
    b = yaml.safe_load(yaml.safe_dump(a, sort_keys=True))
    assert config_digest(a) == config_digest(b)
    assert len(config_digest(a)) == 12
    b["node"]["service"] = "other"
    assert config_digest(a) != config_digest(b)


def test_bookinfo_reviews_splits_translate(registry: PluginRegistry) -> None:
    """Istio's bookinfo VirtualServices (weights, header match on end-user) expressed as
    sidemesh routes build into the expected chains."""
    folder = CONFORMANCE / "istio" / "bookinfo-networking"
    if not folder.is_dir():
        pytest.skip("conformance data not present")
    routes = []
    for name in ("virtual-service-reviews-90-10.yaml", "virtual-service-reviews-jason-v2-v3.yaml",
                 "virtual-service-reviews-80-20.yaml"):
        for vs in yaml.safe_load_all((folder / name).read_text()):
            for index, http in enumerate(vs["spec"]["http"]):
                match: dict[str, object] = {"host": vs["spec"]["hosts"][0]}
                for m in http.get("match", []):
                    for header, rule in m.get("headers", {}).items():
                        match.setdefault("headers", {})[header] = rule  # type: ignore[index]
                destinations = [{"subset": r["destination"]["subset"],
                                 "weight": r.get("weight", 100)} for r in http["route"]]
                routes.append({"name": f"{vs['metadata']['name']}-{name[16:-5]}-{index}",
                               "match": match, "cluster": "reviews",
                               "plugins": [{"name": "fakesplit",
                                            "config": {"destinations": destinations}}]})
    doc = {"node": {"service": "productpage"},
           "clusters": [{"name": "reviews",
                         "endpoints": [{"address": f"127.0.0.1:{9080 + i}",
                                        "labels": {"version": f"v{i}"}} for i in (1, 2, 3)],
                         "subsets": [{"name": f"v{i}", "labels": {"version": f"v{i}"}}
                                     for i in (1, 2, 3)]}],
           "listeners": [{"name": "out", "address": "127.0.0.1:0", "routes": routes}]}
    config = build(doc, registry)
    weights = {r.name: [(d["subset"], d["weight"]) for d in r.chain[0].config["destinations"]]
               for r in config.listeners[0].routes}
    assert [("v1", 90), ("v2", 10)] in weights.values()
    assert [("v1", 80), ("v2", 20)] in weights.values()
    jason = [r for r in config.listeners[0].routes if r.match.headers]
    assert jason and jason[0].match.headers == (HeaderMatch("end-user", "exact", "jason"),)
