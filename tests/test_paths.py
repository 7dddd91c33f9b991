"""Path normalization as pure functions: bytes of a request target in, the path routes
match and the upstream receives out (issue 13, finding 5)."""

from __future__ import annotations

import pytest

from sidemesh.datapath.paths import PathRejected, normalize_path


@pytest.mark.parametrize(
    ("target", "normalized"),
    [
        ("/public/index.html", "/public/index.html"),
        ("/public/../admin", "/admin"),
        ("/public/./a/../b", "/public/b"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/public\\..\\admin", "/admin"),
        ("//admin", "/admin"),
        ("/public//../admin", "/admin"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("/.hidden/x", "/.hidden/x"),
        ("/a%41%7e", "/aA~"),
        ("/a%3f%20b", "/a%3F%20b"),
        ("/search?q=../x&p=//y", "/search?q=../x&p=//y"),
        ("/a/../b?x=%2F", "/b?x=%2F"),
    ],
)
def test_normalized_as_envoy_does(target: str, normalized: str) -> None:
    assert normalize_path(target) == normalized


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/public%2F..%2Fadmin", "escaped slash"),
        ("/public%2f..%2fadmin", "escaped slash"),
        ("/public%5C..%5Cadmin", "escaped slash"),
        ("/public#/../admin", "fragment"),
        ("/a%zz", "invalid percent-encoding"),
        ("/a%4", "truncated"),
    ],
)
def test_what_cannot_be_normalized_safely_is_refused(target: str, reason: str) -> None:
    with pytest.raises(PathRejected, match=reason):
        normalize_path(target)


def test_escaped_slashes_by_setting() -> None:
    assert normalize_path("/a%2fb/c/../d", escaped_slashes="keep") == "/a%2Fb/d"
    assert normalize_path("/a%2fb/../c", escaped_slashes="unescape") == "/a/c"
    assert normalize_path("/a%5cb", escaped_slashes="unescape") == "/a/b"


def test_merge_slashes_can_be_turned_off() -> None:
    assert normalize_path("/a//b", merge_slashes=False) == "/a//b"
    assert normalize_path("/a//../b", merge_slashes=False) == "/a/b"


def test_an_untouched_path_is_the_same_object() -> None:
    target = "/reviews/1?x=1"
    assert normalize_path(target) is target
