"""The plugin as users configure it: schema, defaults, semantic checks, discovery."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Any

import jsonschema
import pytest
from sidemesh_mtls_testkit import NODE, Pki, listener_policy, route_policy, sid

from sidemesh import PolicyContext, testing
from sidemesh_mtls import manager as manager_module
from sidemesh_mtls.identity import IdentityError
from sidemesh_mtls.plugin import sidemesh_policies
from sidemesh_mtls.policy import MtlsPolicy


def defaults() -> dict[str, Any]:
    return {k: v["default"] for k, v in MtlsPolicy.schema["properties"].items()}


def test_schema_is_valid_and_every_property_documented() -> None:
    schema = MtlsPolicy.schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "https://sidemesh.dev/schemas/plugins/mtls.json"
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description") and "default" in prop, name
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(defaults()))
    for bad in (
        {"mode": "disable"},
        {"allow": ["https://x"]},
        {"expect": "reviews"},
        {"unknown": 1},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_plugin_is_discoverable() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="sidemesh")}
    assert names.get("mtls") == "sidemesh_mtls.plugin"
    assert sidemesh_policies() == [MtlsPolicy]


def _context(scope: str, cluster: str | None = None) -> PolicyContext:
    target = testing.make_cluster(cluster) if cluster else None
    return testing.policy_context("mtls", cluster=target, scope=scope, node=NODE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "scope", "cluster", "message"),
    [
        ({"cert_file": "a.pem"}, "listener", None, "without key_file, bundle_file"),
        ({"allow": ["reviews"]}, "listener", None, "must be '*' or start with 'spiffe://'"),
        ({"expect": "spiffe://td"}, "route", "x", "names a trust domain"),
        ({"expect": "spiffe://td/a//b"}, "route", "x", "empty path segment"),
        ({}, "route", "reviews.default.svc:80", "derived from the cluster name"),
    ],
)
def test_semantic_errors_are_reported(
    config: dict[str, Any], scope: str, cluster: str | None, message: str
) -> None:
    errors = MtlsPolicy.check_config({**defaults(), **config}, _context(scope, cluster))
    assert any(message in e for e in errors), errors


def test_good_configs_have_no_errors() -> None:
    assert MtlsPolicy.check_config(defaults(), _context("listener")) == []
    assert MtlsPolicy.check_config(defaults(), _context("route", "reviews")) == []


def test_defaults_istio_like(pki: Pki) -> None:
    files = pki.write(pki.issue("reviews"), "reviews")
    inbound = listener_policy({**defaults(), **files})
    outbound = route_policy({**defaults(), **files}, cluster="ratings")
    assert inbound.mode == "strict"
    assert inbound.allow == ["spiffe://cluster.local/*"]
    assert outbound.expect == sid("ratings")
    # One identity for the whole process, whatever the number of policies.
    assert inbound.manager is outbound.manager and inbound.manager.users == 2

    async def close() -> None:
        await inbound.close()
        await outbound.close()

    asyncio.run(close())
    assert inbound.manager not in manager_module._MANAGERS.values()


def test_no_certificates_at_all_is_a_clear_error() -> None:
    with pytest.raises(IdentityError, match="or run the sidecar with a control plane"):
        listener_policy(defaults())
