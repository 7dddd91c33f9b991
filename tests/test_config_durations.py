"""Durations as written in configs and flags: Go's syntax, without a sign."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidemesh import testing
from sidemesh.api.durations import DURATION_PATTERN, format_duration, parse_duration

REPO = Path(__file__).resolve().parent.parent
ISTIO = REPO.parent / "shared" / "conformance" / "istio"


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("0s", 0.0), ("1.5s", 1.5),
    ("0.5ms", 0.0005), ("90m", 5400.0),
    # What Istio and Envoy users copy from Go tools and Kubernetes manifests.
    ("1m30s", 90.0), ("1h2m3.5s", 3723.5), ("1.5h", 5400.0), ("500us", 0.0005),
    ("500\u00b5s", 0.0005), ("500\u03bcs", 0.0005), ("250ns", 2.5e-7), ("2h45m", 9900.0),
    ("1.s", 1.0), (".5s", 0.5), ("1s500ms", 1.5), ("0", 0.0),
    ("2562047h47m16.854775807s", 9223372036.854775807),
])
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-15, abs=1e-15)
    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["", "2", "00", "s", "-1s", "+1s", "2 s", " 2s", "2S", "1d",
                                  ".s", "ms", "1e3ms", "2s ", "\uff11s", "2s\n", "1m 30s",
                                  "1mm", "1.2.3s", "us"])
def test_rejects_with_a_message_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration.*e\.g\. '250ms'.*'1m30s'"):
        parse_duration(text)
    assert not re.fullmatch(DURATION_PATTERN, text)


def test_longer_than_go_allows_is_rejected() -> None:
    # Go's limit: an int64 of nanoseconds. The schema cannot say so; the parser does.
    with pytest.raises(ValueError, match="too long a duration: the longest is 2562047h47m16"):
        parse_duration("2562047h47m16.854775808s")
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9" * 100 + "h")


def test_a_config_takes_go_durations_and_names_what_is_wrong_with_one() -> None:
    doc = testing.simple_config("127.0.0.1:9", timeout="1m30s")
    doc["clusters"][0]["connect_timeout"] = "1.5s"
    doc["listeners"][0]["idle_timeout"] = "1h2m3.5s"
    assert testing.validate_config(doc) == []
    doc["listeners"][0]["routes"][0]["timeout"] = 5  # YAML's `timeout: 5`
    doc["listeners"][0]["idle_timeout"] = "3000000h"
    doc["clusters"][0]["connect_timeout"] = "0"
    found = {e.path: (e.rule, e.message) for e in testing.validate_config(doc)}
    assert found == {
        "listeners[0].routes[0].timeout": (
            "type", "expected a string, got an integer 5; write a duration with its unit, "
            "e.g. '5s'"),
        "listeners[0].idle_timeout": (
            "duration", "'3000000h' is too long a duration: the longest is "
            "2562047h47m16.854775807s"),
        "clusters[0].connect_timeout": ("duration", "connect_timeout must be greater than 0s"),
    }


def test_non_strings_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250ms"), (3.0, "3s"), (0.0, "0s"), (90.0, "1m30s"), (3600.0, "1h"),
    (5400.0, "1h30m"), (3723.5, "1h2m3.5s"), (0.0005, "500us"), (1e-7, "100ns"),
    (1e6, "277h46m40s"), (0.1, "100ms"), (1.5, "1.5s"), (60.25, "1m0.25s"),
])
def test_format_renders_what_parse_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_format_round_trips_and_refuses_what_is_no_duration() -> None:
    for text in ("250ms", "2s", "60s", "0s", "1m30s", "1.5h", "500us", "7ns", "0",
                 "2562047h47m16.854775807s"):
        seconds = parse_duration(text)
        assert parse_duration(format_duration(seconds)) == seconds
    for bad in (-1.0, float("inf"), float("nan"), 1e10):
        with pytest.raises(ValueError, match="a duration is between 0 and"):
            format_duration(bad)


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_every_schema_spells_durations_with_the_parsers_pattern() -> None:
    # A schema that accepts what the parser refuses (or the reverse) fails only when a
    # config uses it; any pattern that looks like a duration's must be the one.
    schemas = [REPO / "schemas" / "sidemesh.schema.json",
               *sorted(REPO.glob("plugins/*/sidemesh_*/schema.json"))]
    assert len(schemas) >= 6
    uses = 0
    for path in schemas:
        for pattern in _patterns(json.loads(path.read_text(encoding="utf-8"))):
            if "ms" in pattern:
                assert pattern == DURATION_PATTERN, f"{path}: {pattern}"
                uses += 1
    assert uses >= 10


def test_the_config_reference_calls_the_pattern_a_duration() -> None:
    from sidemesh.tools.docgen_schema import rows

    schema = {"type": "object", "properties": {"t": {
        "type": "string", "pattern": DURATION_PATTERN, "default": "1s", "description": "T."}}}
    (row,) = rows(schema)
    assert row.bounds == "a duration"


def _duration_keys(node: Any) -> set[str]:
    # Istio's CRDs mark a duration with a CEL rule on duration(self).
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            if "duration(self)" in json.dumps(value.get("x-kubernetes-validations", [])):
                keys.add(key)
        for value in node.values():
            keys |= _duration_keys(value)
    elif isinstance(node, list):
        for value in node:
            keys |= _duration_keys(value)
    return keys


def _values(node: Any, keys: set[str]) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in keys and isinstance(v, str)] + [
            found for value in node.values() for found in _values(value, keys)]
    if isinstance(node, list):
        return [found for value in node for found in _values(value, keys)]
    return []


@pytest.mark.skipif(not ISTIO.is_dir(), reason=f"conformance material not found at {ISTIO}")
def test_every_duration_in_istios_samples_parses() -> None:
    keys: set[str] = set()
    for schema in sorted((ISTIO / "schemas").glob("*.openapi-v3.json")):
        keys |= _duration_keys(json.loads(schema.read_text(encoding="utf-8")))
    assert {"perTryTimeout", "timeout", "baseEjectionTime", "interval"} <= keys
    found = [value for sample in sorted(ISTIO.glob("*/*.yaml"))
             for doc in yaml.safe_load_all(sample.read_text(encoding="utf-8"))
             for value in _values(doc, keys)]
    assert len(found) >= 10
    for value in found:
        assert parse_duration(value) > 0, value
