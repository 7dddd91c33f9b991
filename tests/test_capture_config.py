"""Transparent capture without iptables: the ``use_original_dst`` listener and
``destination`` route keys as a config states them, the rules ``sidemesh iptables``
prints, and its errors. The capture itself is tests/test_capture_netns.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh.datapath.messages import Headers
from sidemesh.datapath.model import RouteConfig, RouteMatch
from sidemesh.datapath.routing import RouteTable
from sidemesh.testing import Upstream, run_cli, running_sidecar, validate_config

DOC: dict[str, Any] = {
    "node": {"service": "productpage"},
    "clusters": [{"name": "reviews", "endpoints": [{"address": "127.0.0.1:9"}]}],
    "listeners": [{
        "name": "outbound", "address": "127.0.0.1:0", "use_original_dst": True,
        "routes": [{"name": "to-reviews", "match": {"destination": "127.10.0.1:9080"},
                    "cluster": "reviews"}],
    }],
}


def _with(match: dict[str, Any], original: bool = True) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["listeners"][0]["use_original_dst"] = original
    doc["listeners"][0]["routes"][0]["match"] = match
    return doc


@pytest.mark.parametrize("match", [
    {"destination": "127.10.0.1:9080"}, {"destination": "127.10.0.1"},
    {"destination": "[fd00::1]:9080"}, {"destination_port": 9080},
    {"destination": "10.96.0.10", "destination_port": 53, "prefix": "/"},
])
def test_destination_matches_are_valid_on_an_original_dst_listener(
    match: dict[str, Any],
) -> None:
    assert validate_config(_with(match)) == []


@pytest.mark.parametrize(("match", "original", "path", "says"), [
    ({"destination": "127.10.0.1:9080"}, False, "match.destination",
     "needs use_original_dst: true on the listener"),
    ({"destination_port": 9080}, False, "match.destination_port", "would never match"),
    ({"destination": "reviews:9080"}, True, "match.destination", "does not match"),
    ({"destination": "300.1.2.3:9080"}, True, "match.destination", "not an IP address"),
    ({"destination": "127.10.0.1:70000"}, True, "match.destination", "out of range"),
    ({"destination_port": 0}, True, "match.destination_port", "less than the minimum"),
])
def test_a_destination_match_that_cannot_work_is_an_error_with_its_path(
    match: dict[str, Any], original: bool, path: str, says: str
) -> None:
    errors = validate_config(_with(match, original))
    assert [e.path for e in errors] == [f"listeners[0].routes[0].{path}"]
    assert says in errors[0].message


def _table(*matches: RouteMatch) -> RouteTable:
    return RouteTable([RouteConfig(f"r{i}", m, "c") for i, m in enumerate(matches)])


def test_routes_match_the_original_destination_by_address_port_or_both() -> None:
    table = _table(RouteMatch(destination="127.10.0.1:9080"), RouteMatch(destination="127.10.0.2"),
                   RouteMatch(destination_port=53), RouteMatch(destination="[fd00::1]"),
                   RouteMatch(host="reviews"))
    headers = Headers()

    def route(destination: str | None, host: str = "x") -> int | None:
        return table.match("GET", host, "/", headers, destination)

    assert route("127.10.0.1:9080") == 0
    assert route("127.10.0.1:9081") is None
    assert route("127.10.0.2:1") == 1
    assert route("10.0.0.1:53") == 2
    assert route("[fd00::1]:80") == 3
    # No original destination (a connection made to the listener itself): only the
    # routes without destination conditions can match.
    assert route(None) is None
    assert route(None, "reviews") == 4


def test_a_connection_made_to_an_original_dst_listener_itself_is_routed_by_host() -> None:
    with Upstream() as upstream:
        doc = copy.deepcopy(DOC)
        doc["clusters"][0]["endpoints"] = [{"address": upstream.address}]
        doc["listeners"][0]["routes"].append(
            {"name": "by-host", "match": {"host": "reviews"}, "cluster": "reviews"})
        with running_sidecar(doc) as sidecar:
            url = sidecar.url("outbound")
            assert httpx.get(url, headers={"host": "reviews"}, timeout=5).status_code == 200
            # Without a redirect there is no original destination to match: no loop.
            missed = httpx.get(url, headers={"host": "127.10.0.1:9080"}, timeout=5)
            assert missed.status_code == 404
        assert len(upstream.requests) == 1


def test_iptables_prints_istio_shaped_rules_for_the_options_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli("iptables", "--uid", "2000", "--gid", "2001", "--inbound-port", "0",
                   "--exclude-outbound-ports", "15010,15012",
                   "--include-outbound-cidrs", "10.96.0.0/12, 127.10.0.0/16") == 0
    rules = capsys.readouterr().out.splitlines()
    assert rules[0] == "*nat" and rules[-1] == "COMMIT"
    body = [r for r in rules if r.startswith("-A")]
    assert body == [
        "-A SIDEMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A SIDEMESH_OUTPUT -m owner --uid-owner 2000 -j RETURN",
        "-A SIDEMESH_OUTPUT -m owner --gid-owner 2001 -j RETURN",
        "-A SIDEMESH_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A SIDEMESH_OUTPUT -p tcp --dport 15010 -j RETURN",
        "-A SIDEMESH_OUTPUT -p tcp --dport 15012 -j RETURN",
        "-A SIDEMESH_OUTPUT -d 10.96.0.0/12 -j SIDEMESH_REDIRECT",
        "-A SIDEMESH_OUTPUT -d 127.10.0.0/16 -j SIDEMESH_REDIRECT",
        "-A OUTPUT -p tcp -j SIDEMESH_OUTPUT",
    ]


@pytest.mark.parametrize(("args", "says"), [
    (["--uid", "proxy"], "'proxy' is not a numeric id"),
    (["--inbound-port", "70000"], "'70000' is not a port"),
    (["--include-outbound-cidrs", "fd00::/8"], "only IPv4 is captured"),
    (["--include-outbound-cidrs", "10.0.0.0/33"], "10.0.0.0/33"),
    (["--apply", "--clean"], "not allowed with argument"),
])
def test_iptables_refuses_bad_options_with_a_usage_error(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("iptables", *args)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_iptables_apply_without_iptables_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run_cli("iptables", "--apply") == 1
    err = capsys.readouterr().err
    assert err.startswith("sidemesh iptables: error: iptables") and "apt-get install" in err
    assert "Traceback" not in err


def test_explain_says_a_destination_route_needs_a_redirected_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    doc = _with({"destination": "127.10.0.1:9080"})
    doc["listeners"][0]["routes"].append(
        {"name": "by-host", "match": {"prefix": "/"}, "cluster": "reviews"})
    path = tmp_path / "capture.yaml"
    path.write_text(json.dumps(doc))
    assert run_cli("explain", "-c", str(path), "--json", "GET", "http://reviews/") == 0
    tried = json.loads(capsys.readouterr().out)["listeners"][0]["tried"]
    assert [t["route"] for t in tried] == ["to-reviews", "by-host"]
    assert tried[0]["why"] == ("matches only connections redirected to 127.10.0.1:9080 "
                               "(use_original_dst), which explain cannot know")
    assert tried[1]["matched"]
