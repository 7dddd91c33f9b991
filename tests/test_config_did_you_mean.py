"""An unknown key says which key was meant: the snake_case form of an Istio-style
camelCase (or kebab-case) key, else the closest allowed key; in the core's sections and
in every plugin's config alike, with the usual path, plugin, version and rule."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from sidemesh import testing
from sidemesh.config.errors import did_you_mean, snake_case
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import validate


@pytest.fixture(scope="module")
def registry(fake_policies: ModuleType) -> PluginRegistry:
    return PluginRegistry.load(extra_plugins=[fake_policies])


def config(**retry: Any) -> dict[str, Any]:
    return testing.simple_config("127.0.0.1:9", plugins=[{"name": "fakeretry", "config": retry}])


@pytest.mark.parametrize(("key", "snake"), [
    ("perTryTimeout", "per_try_timeout"), ("connectTimeout", "connect_timeout"),
    ("maxEjectionPercent", "max_ejection_percent"), ("HTTPRetry", "http_retry"),
    ("consecutive5xxErrors", "consecutive5xx_errors"), ("max-retries", "max_retries"),
    ("retry_on", "retry_on"),
])
def test_snake_case(key: str, snake: str) -> None:
    assert snake_case(key) == snake


def test_a_camel_case_plugin_key_suggests_its_snake_case(registry: PluginRegistry) -> None:
    (error,) = validate(config(perTryTimeout="2s"), registry)
    assert error.path == "listeners[0].routes[0].plugins[0].config.perTryTimeout"
    assert (error.plugin, error.plugin_version, error.rule) == (
        "fakeretry", "1.2.3", "additionalProperties")
    assert error.message == (
        "unknown key 'perTryTimeout' (allowed: attempts, budget, per_try_timeout, retry_on); "
        "did you mean 'per_try_timeout'?")


def test_a_camel_case_core_key_suggests_its_snake_case(registry: PluginRegistry) -> None:
    doc = config()
    cluster = doc["clusters"][0]
    cluster["connectTimeout"] = cluster.pop("connect_timeout")
    doc["listeners"][0]["routes"][0]["perTryTimeout"] = "1s"
    found = {e.path: e for e in validate(doc, registry)}
    assert found["clusters[0].connectTimeout"].message.endswith(
        "; did you mean 'connect_timeout'?")
    assert found["clusters[0].connectTimeout"].rule == "additionalProperties"
    assert found["clusters[0].connectTimeout"].plugin is None
    # Not a key of a route at all: no suggestion rather than a wrong one.
    assert "did you mean" not in found["listeners[0].routes[0].perTryTimeout"].message


def test_a_typo_suggests_the_closest_key(registry: PluginRegistry) -> None:
    doc = config(attemps=3, budget={"min_concurency": 1})
    found = {e.path: e.message for e in validate(doc, registry)}
    config_path = "listeners[0].routes[0].plugins[0].config"
    assert found[f"{config_path}.attemps"].endswith("; did you mean 'attempts'?")
    assert found[f"{config_path}.budget.min_concurency"].endswith(
        "; did you mean 'min_concurrency'?")


@pytest.mark.parametrize(("key", "allowed", "hint"), [
    ("retryOn", ["retry_on", "retry"], "; did you mean 'retry_on'?"),
    ("perTryTimout", ["per_try_timeout"], "; did you mean 'per_try_timeout'?"),
    ("http1MaxPendingRequests", ["max_pending_requests", "max_requests"],
     "; did you mean 'max_pending_requests'?"),
    ("colour", ["name", "address"], ""),
    ("x", [], ""),
])
def test_did_you_mean(key: str, allowed: list[str], hint: str) -> None:
    assert did_you_mean(key, allowed) == hint


@pytest.mark.skipif(not testing.installed("retry"), reason="sidemesh-retry is not installed")
def test_an_istio_key_in_a_real_plugin() -> None:
    doc = testing.simple_config("127.0.0.1:9", plugins=[
        {"name": "retry", "config": {"attempts": 3, "perTryTimeout": "2s"}}])
    (error,) = testing.validate_config(doc)
    assert error.plugin == "retry" and error.rule == "additionalProperties"
    assert error.message.endswith("; did you mean 'per_try_timeout'?")
