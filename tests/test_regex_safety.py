"""Route regexes cannot stall the proxy (issue 13, finding 4): RE2 semantics as Envoy's
``safe_regex``, constructs RE2 lacks and oversized programs refused by ``validate``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sidemesh import testing
from sidemesh.datapath.regex import MAX_PROGRAM_SIZE, RegexError, compile_regex

#: 2**64 backtracking steps for Python's re: the request never finished before.
EVIL_VALUE = "a" * 64 + "!"


def _config(upstream: str, header_regex: str) -> dict[str, Any]:
    doc = testing.simple_config(upstream)
    route = doc["listeners"][0]["routes"][0]
    route["match"]["headers"] = {"x-user": {"regex": header_regex}}
    fallback = {"name": "fallback", "match": {"prefix": "/"}, "cluster": route["cluster"]}
    doc["listeners"][0]["routes"].append(fallback)
    return doc


def test_catastrophic_pattern_answers_at_once_through_a_real_sidecar() -> None:
    with testing.Upstream() as up, testing.running_sidecar(_config(up.address, "(a+)+$")) as sc:
        # Before RE2 this request held the event loop for longer than the universe.
        answer = httpx.get(sc.url("main") + "/", headers={"x-user": EVIL_VALUE}, timeout=10)
        assert answer.status_code == 200
        # ...and the proxy still serves others.
        assert httpx.get(sc.url("main") + "/", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "back-references"),
        (r"(?<=a)b", "look-arounds"),
        (r"(?=a)a", "look-arounds"),
        ("(unclosed", "not a valid RE2"),
    ],
)
def test_what_re2_cannot_run_is_refused_with_its_path(pattern: str, why: str) -> None:
    errors = testing.validate_config(_config("127.0.0.1:9", pattern))
    found = [e for e in errors if e.path == "listeners[0].routes[0].match.headers['x-user'].regex"]
    assert found and "not a valid RE2 regular expression" in found[0].message, errors
    assert why in found[0].message or why == "not a valid RE2"


def test_a_program_over_envoys_size_limit_is_refused() -> None:
    pattern = "(ab|cd|ef|gh){1,60}"
    with pytest.raises(RegexError, match=f"over the limit of {MAX_PROGRAM_SIZE}"):
        compile_regex(pattern)
    doc = testing.simple_config("127.0.0.1:9")
    doc["listeners"][0]["routes"][0]["match"] = {"regex": pattern}
    (error,) = testing.validate_config(doc)
    assert error.path == "listeners[0].routes[0].match.regex"
    assert "program size" in error.message


def test_ordinary_route_regexes_keep_working() -> None:
    assert compile_regex(r"/reviews/[0-9]+").fullmatch("/reviews/12") is not None
    assert compile_regex(r"/reviews/\d+").fullmatch("/reviews/12/x") is None
