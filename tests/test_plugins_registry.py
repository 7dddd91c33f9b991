"""The plugin registry: discovery through real entry points, policies, versions, errors."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sidemesh import Policy, hookimpl
from sidemesh.api.durations import DURATION_PATTERN
from sidemesh.config.registry import PluginRegistry, composed_schema, core_schema

REPO = Path(__file__).resolve().parents[1]


class Stamp(Policy):
    name = "stamp"
    schema: dict[str, Any] = {
        "$id": "https://sidemesh.dev/schemas/plugins/stamp.json",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "header": {"type": "string", "default": "x-stamp", "description": "header"},
            "count": {"type": "integer", "minimum": 1, "maximum": 5, "default": 1,
                      "description": "count"},
        },
    }

    def on_request(self, request: Any) -> None:
        return None

    def on_response(self, request: Any, attempt: Any) -> None:
        return None


class Noop(Policy):
    name = "noop"


class StampPlugin:
    @hookimpl
    def sidemesh_policies(self) -> list[type[Policy]]:
        return [Stamp, Noop]


def make_dist(root: Path, dist: str, version: str, ep_name: str, module: str, code: str) -> None:
    """Install a real (tiny) distribution into ``root``: a module and its dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sidemesh]\n{ep_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_extra_plugin_policies_are_registered_with_hooks_and_local_version() -> None:
    registry = PluginRegistry.load(extra_plugins=[StampPlugin()])
    stamp = registry.get("stamp")
    assert stamp is not None
    assert stamp.cls is Stamp
    assert stamp.hooks == ("on_request", "on_response")
    assert stamp.schema_id == "https://sidemesh.dev/schemas/plugins/stamp.json"
    assert stamp.version == "0+local"
    assert {"stamp", "noop"} <= set(registry.names())
    assert registry.get("noop") is not None and registry.get("noop").hooks == ()  # type: ignore[union-attr]
    assert registry.get("missing") is None


def test_version_specifiers_are_checked_against_the_installed_version(site: Path) -> None:
    make_dist(site, "sidemesh-stampy", "1.4.2", "stampy", "sidemesh_stampy_ep", """
        from sidemesh import Policy, hookimpl
        class Stampy(Policy):
            name = "stampy"
        @hookimpl
        def sidemesh_policies():
            return [Stampy]
    """)
    registry = PluginRegistry.load()
    stampy = registry.get("stampy")
    assert stampy is not None
    assert (stampy.distribution, stampy.version) == ("sidemesh-stampy", "1.4.2")
    assert registry.version_satisfies("stampy", ">=1.2,<2")
    assert not registry.version_satisfies("stampy", ">=2")
    with pytest.raises(ValueError, match="not a PEP 440"):
        registry.version_satisfies("stampy", "newest please")


def test_a_plugin_that_fails_to_import_is_recorded_not_fatal(site: Path) -> None:
    make_dist(site, "sidemesh-broken", "0.3.0", "broken", "sidemesh_broken_ep", """
        raise ImportError("needs libfoo")
    """)
    make_dist(site, "sidemesh-fine", "0.1.0", "fine", "sidemesh_fine_ep", """
        from sidemesh import Policy, hookimpl
        class Fine(Policy):
            name = "fine"
        @hookimpl
        def sidemesh_policies():
            return [Fine]
    """)
    registry = PluginRegistry.load()
    assert registry.get("fine") is not None
    error = registry.load_error("broken")
    assert error is not None
    assert error.distribution == "sidemesh-broken" and error.version == "0.3.0"
    assert str(error) == "plugin 'broken' failed to load: ImportError: needs libfoo"


def test_unknown_hook_and_bad_policies_are_load_errors() -> None:
    class Typo:
        @hookimpl
        def sidemesh_polices(self) -> list[type[Policy]]:
            return []

    class NotAPolicy:
        @hookimpl
        def sidemesh_policies(self) -> list[object]:
            return [int]

    class BadSchema(Policy):
        name = "badschema"
        schema = {"type": "no-such-type"}

    class BadSchemaPlugin:
        @hookimpl
        def sidemesh_policies(self) -> list[type[Policy]]:
            return [BadSchema]

    registry = PluginRegistry.load(
        extra_plugins=[Typo(), NotAPolicy(), BadSchemaPlugin(), StampPlugin()]
    )
    messages = [e.message for e in registry.load_errors]
    assert any("sidemesh_polices" in m for m in messages)
    assert any("not a subclass of sidemesh.Policy" in m for m in messages)
    assert any("not a valid JSON Schema" in m for m in messages)
    assert registry.get("badschema") is None
    assert registry.get("stamp") is not None


def test_duplicate_policy_names_are_a_clear_error_and_neither_is_used() -> None:
    class OtherStamp(Policy):
        name = "stamp"

    class Other:
        @hookimpl
        def sidemesh_policies(self) -> list[type[Policy]]:
            return [OtherStamp]

    registry = PluginRegistry.load(extra_plugins=[StampPlugin(), Other()])
    assert registry.get("stamp") is None
    error = registry.load_error("stamp")
    assert error is not None
    assert "provided by more than one plugin" in error.message


def test_core_schema_is_valid_and_documents_every_property() -> None:
    schema = core_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "https://sidemesh.dev/schemas/sidemesh.json"

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                assert node.get("additionalProperties") is not True, where
                if "properties" in node:
                    assert node.get("additionalProperties") is False, where
                for key, prop in node.get("properties", {}).items():
                    target = prop
                    if "$ref" in prop and "description" not in prop:
                        target = schema["$defs"][prop["$ref"].rsplit("/", 1)[1]]
                    assert "description" in target, f"{where}.{key} has no description"
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(schema, "#")
    assert schema["$defs"]["cluster"]["properties"]["connect_timeout"]["pattern"] == (
        DURATION_PATTERN
    )


def test_the_core_schema_is_read_from_its_one_source() -> None:
    # The checkout's schemas/ is the only copy (the wheel carries it: test_release.py);
    # a second one inside the package could drift from what docgen documents.
    assert not (REPO / "core" / "sidemesh" / "schemas").exists()
    source = json.loads((REPO / "schemas" / "sidemesh.schema.json").read_text())
    assert core_schema() == source


def test_composed_schema_validates_plugin_configs_by_name() -> None:
    registry = PluginRegistry.load(extra_plugins=[StampPlugin()])
    schema = composed_schema(registry)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    doc: dict[str, Any] = {
        "node": {"service": "a"},
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:1"}]}],
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0",
            "routes": [{"name": "r", "cluster": "c",
                        "plugins": [{"name": "stamp", "config": {"count": 3}}]}],
        }],
    }
    assert list(validator.iter_errors(doc)) == []
    doc["listeners"][0]["routes"][0]["plugins"][0]["config"]["count"] = 9
    errors = list(validator.iter_errors(doc))
    assert errors and any("9 is greater than the maximum of 5" in e.message
                          for e in errors for e in [e, *(e.context or [])])
