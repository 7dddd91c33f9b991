"""Route matching: Envoy-like hosts, paths, headers and methods; first match wins."""

from __future__ import annotations

import pytest

from sidemesh.datapath.messages import Headers
from sidemesh.datapath.model import HeaderMatch, RouteConfig, RouteMatch
from sidemesh.datapath.routing import RouteTable


def table(*matches: RouteMatch) -> RouteTable:
    return RouteTable([RouteConfig(f"r{i}", m, "c") for i, m in enumerate(matches)])


def hit(t: RouteTable, host: str = "svc", path: str = "/", method: str = "GET",
        headers: list[tuple[str, str]] | None = None) -> int | None:
    return t.match(method, host, path, Headers(headers or []))


@pytest.mark.parametrize(
    ("configured", "request_host", "expected"),
    [
        ("reviews", "reviews", True),
        ("reviews", "REVIEWS", True),
        ("reviews", "reviews:9080", True),
        ("reviews", "ratings", False),
        ("reviews", "reviews.default", False),
        ("reviews:9080", "reviews:9080", True),
        ("reviews:9080", "reviews:9081", False),
        ("reviews:9080", "reviews", False),
        ("*", "anything:1", True),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "api.example.com:443", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*-bar.foo.com", "baz-bar.foo.com", True),
        ("*-bar.foo.com", "-bar.foo.com", False),
        ("foo.*", "foo.com", True),
        ("foo.*", "foo.", False),
        ("foo-*", "foo-bar:80", True),
        ("[::1]", "[::1]:8080", True),
        ("[::1]:8080", "[::1]:8080", True),
        ("127.0.0.1", "127.0.0.1:15001", True),
    ],
)
def test_host_matching(configured: str, request_host: str, expected: bool) -> None:
    assert (hit(table(RouteMatch(host=configured)), host=request_host) == 0) is expected


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        (RouteMatch(prefix="/api"), "/api/v1?x=1", True),
        (RouteMatch(prefix="/api"), "/apiv2", True),  # Envoy prefix is a plain string prefix
        (RouteMatch(prefix="/api/"), "/api", False),
        (RouteMatch(path="/health"), "/health?full=1", True),
        (RouteMatch(path="/health"), "/health/", False),
        (RouteMatch(regex=r"/reviews/\d+"), "/reviews/12?a=b", True),
        (RouteMatch(regex=r"/reviews/\d+"), "/reviews/12/x", False),  # full match only
        (RouteMatch(regex=r"/reviews/\d+"), "/x/reviews/12", False),
        (RouteMatch(), "/anything", True),
    ],
)
def test_path_matching(match: RouteMatch, path: str, expected: bool) -> None:
    assert (hit(table(match), path=path) == 0) is expected


def test_header_matching() -> None:
    t = table(
        RouteMatch(headers=(HeaderMatch("x-user", "exact", "jason"),)),
        RouteMatch(headers=(HeaderMatch("x-canary", "present", True),
                            HeaderMatch("x-debug", "present", False))),
        RouteMatch(headers=(HeaderMatch("user-agent", "prefix", "curl/"),)),
        RouteMatch(headers=(HeaderMatch("x-version", "regex", r"v[0-9]+"),)),
    )
    assert hit(t, headers=[("X-User", "jason")]) == 0
    assert hit(t, headers=[("x-user", "Jason")]) is None
    assert hit(t, headers=[("x-canary", "")]) == 1
    assert hit(t, headers=[("x-canary", "1"), ("x-debug", "1")]) is None
    assert hit(t, headers=[("user-agent", "curl/8.5")]) == 2
    assert hit(t, headers=[("x-version", "v12")]) == 3
    assert hit(t, headers=[("x-version", "v12-beta")]) is None
    # repeated headers are joined with "," as Envoy does
    assert hit(t, headers=[("x-user", "jason"), ("x-user", "bob")]) is None
    joined = table(RouteMatch(headers=(HeaderMatch("x-a", "exact", "1,2"),)))
    assert hit(joined, headers=[("x-a", "1"), ("x-a", "2")]) == 0


def test_methods_and_first_match_wins() -> None:
    t = table(
        RouteMatch(host="reviews", prefix="/admin", methods=("POST",)),
        RouteMatch(host="reviews", prefix="/"),
        RouteMatch(prefix="/"),
    )
    assert hit(t, host="reviews", path="/admin", method="POST") == 0
    assert hit(t, host="reviews", path="/admin", method="post") == 0
    assert hit(t, host="reviews", path="/admin", method="GET") == 1
    assert hit(t, host="ratings", path="/admin", method="POST") == 2
    assert table().match("GET", "x", "/", Headers()) is None


def test_a_table_with_many_routes_finds_the_last_one() -> None:
    routes = [RouteMatch(host=f"svc{i}", prefix=f"/p{i}") for i in range(200)]
    t = table(*routes)
    assert hit(t, host="svc199:80", path="/p199/x") == 199
    assert hit(t, host="svc199", path="/p1") is None
