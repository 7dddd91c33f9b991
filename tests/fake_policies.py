"""Small policies the core's config, routing and CLI tests use as plugins.

Loaded two ways: as a module passed to ``PluginRegistry.load(extra_plugins=[...])``, and
as a real entry point of a throw-away distribution for the CLI tests. The names avoid
the real plugins' names so installing those does not collide with these.
"""

from __future__ import annotations

from typing import Any

from sidemesh import Policy, PolicyContext, hookimpl

__version__ = "1.2.3"

DURATION = "^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"


class FakeRetry(Policy):
    name = "fakeretry"
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sidemesh.dev/schemas/plugins/fakeretry.json",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "attempts": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2,
                         "description": "retries after the first try"},
            "per_try_timeout": {"type": "string", "pattern": DURATION, "default": "0s",
                                "description": "per attempt"},
            "retry_on": {"type": "array", "default": ["gateway-error", "reset"],
                         "items": {"enum": ["5xx", "gateway-error", "reset",
                                            "connect-failure"]},
                         "description": "conditions"},
            "budget": {
                "type": "object", "additionalProperties": False, "description": "budget",
                "properties": {
                    "ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                              "description": "ratio"},
                    "min_concurrency": {"type": "integer", "minimum": 0, "default": 3,
                                        "description": "floor"},
                },
            },
        },
    }

    def on_request(self, request: Any) -> None:
        return None

    def on_response(self, request: Any, attempt: Any) -> None:
        return None


class FakeSplit(Policy):
    name = "fakesplit"
    schema: dict[str, Any] = {
        "$id": "https://sidemesh.dev/schemas/plugins/fakesplit.json",
        "type": "object",
        "additionalProperties": False,
        "required": ["destinations"],
        "properties": {
            "destinations": {
                "type": "array", "minItems": 1, "description": "where traffic goes",
                "items": {
                    "type": "object", "additionalProperties": False, "required": ["weight"],
                    "properties": {
                        "subset": {"type": "string", "description": "subset"},
                        "cluster": {"type": "string", "description": "cluster"},
                        "weight": {"type": "integer", "minimum": 0, "maximum": 100,
                                   "description": "weight"},
                    },
                },
            },
            "hash_on": {"type": "string", "pattern": "^(header|cookie):.+$",
                        "description": "sticky key"},
        },
    }

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        errors = []
        if sum(d["weight"] for d in config["destinations"]) == 0:
            errors.append("weights sum to 0")
        if context.cluster is not None:
            for d in config["destinations"]:
                if "subset" in d and d["subset"] not in context.cluster.subsets:
                    errors.append(f"subset {d['subset']!r} is not defined in cluster "
                                  f"{context.cluster.name!r}")
        return errors

    def select_upstream(self, request: Any, endpoints: Any) -> Any:
        return endpoints


class FakeTracing(Policy):
    name = "faketracing"
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sampling": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0,
                         "description": "ratio"},
            "propagation": {"type": "array", "items": {"enum": ["w3c", "b3"]},
                            "default": ["w3c"], "description": "formats"},
        },
    }

    def on_request(self, request: Any) -> None:
        return None


class FakeMtls(Policy):
    name = "fakemtls"
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "mode": {"enum": ["strict", "permissive"], "default": "strict",
                     "description": "mode"},
            "allow": {"type": "array", "items": {"type": "string"}, "default": [],
                      "description": "peers"},
        },
    }

    def connection_setup(self, setup: Any) -> None:
        return None


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [FakeRetry, FakeSplit, FakeTracing, FakeMtls]
