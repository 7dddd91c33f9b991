"""Config validation: every kind of mistake is reported, all at once, with its path,
plugin, version and rule; nothing raises."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import ConfigError, ConfigInvalid, build, parse_yaml, validate

GOOD = """
node: {service: productpage}
admin: 127.0.0.1:15000
clusters:
  - name: reviews
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
  - name: local
    endpoints: [{address: 127.0.0.1:9080}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    plugins:
      - name: faketracing
    routes:
      - name: reviews
        match: {host: reviews, prefix: /, headers: {x-user: {exact: jason}}, methods: [GET]}
        cluster: reviews
        timeout: 3s
        plugins:
          - name: fakeretry
            config: {attempts: 3, per_try_timeout: 500ms}
          - name: fakesplit
            config:
              destinations: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
  - name: inbound
    address: 127.0.0.1:15006
    plugins:
      - name: fakemtls
        config: {mode: strict, allow: ["spiffe://cluster.local/ns/default/sa/*"]}
    routes:
      - {name: local, match: {prefix: /}, cluster: local}
"""


@pytest.fixture(scope="module")
def registry(fake_policies: ModuleType) -> PluginRegistry:
    return PluginRegistry.load(extra_plugins=[fake_policies])


@pytest.fixture
def doc() -> dict[str, Any]:
    return parse_yaml(GOOD, "good.yaml")


def errors_of(doc: dict[str, Any], registry: PluginRegistry) -> dict[str, ConfigError]:
    return {e.path: e for e in validate(doc, registry)}


def test_the_spec_shaped_config_is_valid(doc: dict[str, Any], registry: PluginRegistry) -> None:
    assert validate(doc, registry) == []


def test_unknown_key_names_its_path_and_the_allowed_keys(
    doc: dict[str, Any], registry: PluginRegistry
) -> None:
    doc["listeners"][0]["routes"][0]["retries"] = 3
    (error,) = validate(doc, registry)
    assert error.path == "listeners[0].routes[0].retries"
    assert error.rule == "additionalProperties"
    assert "unknown key 'retries'" in error.message and "cluster" in error.message


def test_plugin_config_error_names_plugin_version_and_rule(
    doc: dict[str, Any], registry: PluginRegistry
) -> None:
    doc["listeners"][0]["routes"][0]["plugins"][0]["config"]["attempts"] = 11
    (error,) = validate(doc, registry)
    assert error.path == "listeners[0].routes[0].plugins[0].config.attempts"
    assert (error.plugin, error.plugin_version, error.rule) == ("fakeretry", "1.2.3", "maximum")
    assert str(error) == (
        "listeners[0].routes[0].plugins[0].config.attempts: 11 is greater than the maximum "
        "of 10 [plugin fakeretry@1.2.3, rule maximum]"
    )


def test_every_error_is_reported_at_once(doc: dict[str, Any], registry: PluginRegistry) -> None:
    bad = copy.deepcopy(doc)
    route = bad["listeners"][0]["routes"][0]
    route["timeout"] = "3 seconds"
    route["cluster"] = "ratings"
    route["plugins"][0]["config"]["attempts"] = -1
    route["plugins"].append({"name": "fakeretyr"})
    route["match"]["regex"] = "/api/(unclosed"
    bad["clusters"][0]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    bad["clusters"].append({"name": "local", "endpoints": [{"address": "127.0.0.1:9"}]})
    bad["listeners"][1]["address"] = "127.0.0.1:15001"
    bad["listeners"][1]["routes"].append({"name": "local", "cluster": "local"})
    bad["node"]["color"] = "blue"
    found = errors_of(bad, registry)
    rules = {path: e.rule for path, e in found.items()}
    assert rules == {
        "listeners[0].routes[0].timeout": "duration",
        "listeners[0].routes[0].cluster": "cluster_ref",
        "listeners[0].routes[0].plugins[0].config.attempts": "minimum",
        "listeners[0].routes[0].plugins[2].name": "plugin",
        "listeners[0].routes[0].match": "dependentSchemas",
        "listeners[0].routes[0].match.regex": "regex",
        "clusters[0].subsets[2]": "subset_endpoints",
        "clusters[2].name": "unique_name",
        "listeners[1].address": "unique_address",
        "listeners[1].routes[1].name": "unique_name",
        "node.color": "additionalProperties",
    }
    assert "did you mean 'fakeretry'?" in found["listeners[0].routes[0].plugins[2].name"].message
    assert "'ratings', which is not defined (clusters: reviews, local, local)" in (
        found["listeners[0].routes[0].cluster"].message)


@pytest.mark.parametrize(
    ("mutate", "path", "rule", "text"),
    [
        (lambda d: d["clusters"][0].update(connect_timeout="0s"), "clusters[0].connect_timeout",
         "duration", "greater than 0s"),
        (lambda d: d["listeners"][0]["routes"][0].update(timeout="2s\n"),
         "listeners[0].routes[0].timeout", "duration", "is not a duration"),
        (lambda d: d["clusters"][0].update(name="reviews\n"), "clusters[0].name", "pattern",
         "is not a name"),
        (lambda d: d["listeners"][0]["routes"][0]["plugins"][0]["config"].update(
            per_try_timeout="1s\n"), "listeners[0].routes[0].plugins[0].config.per_try_timeout",
         "duration", "is not a duration"),
        (lambda d: d["clusters"][0].update(load_balancer="fastest"),
         "clusters[0].load_balancer", "enum", "round_robin, least_request, random"),
        (lambda d: d["clusters"][0]["endpoints"][0].update(address="localhost"),
         "clusters[0].endpoints[0].address", "pattern", "host:port"),
        (lambda d: d["clusters"][0]["endpoints"][0].update(address="127.0.0.1:70000"),
         "clusters[0].endpoints[0].address", "port", "out of range"),
        (lambda d: d["clusters"][1].update(endpoints=[]), "clusters[1].endpoints", "minItems",
         "must not be empty"),
        (lambda d: d["listeners"][0]["routes"][0]["match"]["headers"].update(
            {"x-a": {"regex": "("}}), "listeners[0].routes[0].match.headers['x-a'].regex",
         "regex", "not a valid RE2 regular expression"),
        (lambda d: d["listeners"][0]["routes"][0]["match"]["headers"].update(
            {"x-a": {"exact": "1", "prefix": "2"}}),
         "listeners[0].routes[0].match.headers['x-a']", "maxProperties", "exactly one"),
        (lambda d: d["listeners"][0]["routes"][0]["match"].update(methods=["get"]),
         "listeners[0].routes[0].match.methods[0]", "pattern", "upper-case"),
        (lambda d: d.pop("node"), "", "required", "missing required key 'node'"),
        (lambda d: d.update(listeners={"name": "x"}), "listeners", "type",
         "expected a list, got an object"),
        (lambda d: d["listeners"][0]["plugins"].append({"name": "faketracing"}),
         "listeners[0].plugins[1]", "unique_name", "appears twice"),
        (lambda d: d["listeners"][0]["routes"][0]["plugins"][1]["config"].update(
            destinations=[{"subset": "v1", "weight": 0}]),
         "listeners[0].routes[0].plugins[1].config", "check_config", "weights sum to 0"),
        (lambda d: d["listeners"][0]["routes"][0]["plugins"][1]["config"].update(
            destinations=[{"subset": "v9", "weight": 5}]),
         "listeners[0].routes[0].plugins[1].config", "check_config",
         "subset 'v9' is not defined in cluster 'reviews'"),
        (lambda d: d["listeners"][0]["routes"][0]["plugins"][0].update(version=">=2"),
         "listeners[0].routes[0].plugins[0].version", "version",
         "requires fakeretry >=2, but (local) 1.2.3 is installed"),
        (lambda d: d["listeners"][0]["routes"][0]["plugins"][0].update(version="latest"),
         "listeners[0].routes[0].plugins[0].version", "version", "not a PEP 440"),
        (lambda d: d.update(admin="127.0.0.1:15001"), "listeners[0].address",
         "unique_address", "conflicts with admin"),
        (lambda d: d["listeners"][1].update(address="0.0.0.0:15001"), "listeners[1].address",
         "unique_address", "both bind port 15001"),
    ],
)
def test_each_kind_of_error(
    doc: dict[str, Any], registry: PluginRegistry, mutate: Any, path: str, rule: str, text: str
) -> None:
    mutate(doc)
    found = errors_of(doc, registry)
    assert path in found, found
    assert found[path].rule == rule
    assert text in found[path].message


def test_a_plugin_that_failed_to_load_is_named_in_the_error(
    doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    fake_policies: ModuleType,
) -> None:
    (tmp_path / "sidemesh_kaput_ep.py").write_text("import no_such_module_here\n")
    info = tmp_path / "sidemesh_kaput-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sidemesh-kaput\nVersion: 2.0.0\n")
    (info / "entry_points.txt").write_text("[sidemesh]\nkaput = sidemesh_kaput_ep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = PluginRegistry.load(extra_plugins=[fake_policies])
    doc["listeners"][0]["plugins"].append({"name": "kaput"})
    (error,) = validate(doc, registry)
    assert error.path == "listeners[0].plugins[1].name"
    assert error.message.startswith("plugin 'kaput' failed to load: ModuleNotFoundError")
    assert (error.plugin, error.plugin_version) == ("kaput", "2.0.0")


def test_a_crashing_check_config_is_an_error_not_a_traceback(
    doc: dict[str, Any], fake_policies: ModuleType
) -> None:
    from sidemesh import Policy, PolicyContext, hookimpl

    class Grumpy(Policy):
        name = "grumpy"

        @classmethod
        def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
            raise RuntimeError("boom")

    class Plugin:
        @hookimpl
        def sidemesh_policies(self) -> list[type[Policy]]:
            return [Grumpy]

    registry = PluginRegistry.load(extra_plugins=[fake_policies, Plugin()])
    doc["listeners"][0]["plugins"].append({"name": "grumpy"})
    (error,) = validate(doc, registry)
    assert error.message == "check_config raised RuntimeError: boom"


def test_build_raises_config_invalid_with_all_errors(
    doc: dict[str, Any], registry: PluginRegistry
) -> None:
    doc["clusters"][0]["name"] = "Bad Name"
    doc["listeners"][1]["routes"][0]["timeout"] = "soon"
    with pytest.raises(ConfigInvalid) as caught:
        build(doc, registry)
    paths = [e.path for e in caught.value.errors]
    assert "clusters[0].name" in paths and "listeners[1].routes[0].timeout" in paths
    assert "invalid config (" in str(caught.value)


@pytest.mark.parametrize("junk", [None, [], "text", 3, {"node": "x", "listeners": "y"},
                                  {"listeners": [3, {"routes": [None, {"plugins": [7]}]}]}])
def test_garbage_documents_give_errors_not_exceptions(
    junk: Any, registry: PluginRegistry
) -> None:
    assert validate(junk, registry)
