"""`sidemesh explain`: the route a request gets, the reasons others did not match, the
chain, the endpoints and a split's weights."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from sidemesh.tools.cli import main

TESTS = Path(__file__).resolve().parent

CONFIG = """\
node: {service: productpage}
clusters:
  - name: reviews
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
      - {address: 127.0.0.1:9083, labels: {version: v3}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
  - name: ratings
    endpoints: [{address: 127.0.0.1:9090}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    plugins: [{name: faketracing, config: {sampling: 0.1}}]
    routes:
      - name: ratings
        match: {host: ratings, prefix: /}
        cluster: ratings
      - name: reviews-jason
        match: {host: reviews, prefix: /, headers: {end-user: {exact: jason}}}
        cluster: reviews
        plugins:
          - name: fakesplit
            config: {destinations: [{subset: v2, weight: 50}, {subset: v3, weight: 50}]}
      - name: reviews
        match: {host: reviews, prefix: /reviews, methods: [GET]}
        cluster: reviews
        timeout: 3s
        plugins:
          - {name: fakeretry, version: ">=1", config: {attempts: 3}}
          - name: fakesplit
            config:
              destinations: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
              hash_on: header:end-user
  - name: inbound
    address: 127.0.0.1:15006
    routes:
      - {name: local, match: {path: /health}, cluster: ratings}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TESTS / "fake_policies.py", site / "sidemesh_explain_fakes.py")
    info = site / "sidemesh_explain_fakes-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sidemesh-explain-fakes\n"
                                   "Version: 1.2.3\n")
    (info / "entry_points.txt").write_text("[sidemesh]\nexplainfakes = sidemesh_explain_fakes\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    path = tmp_path / "sidemesh.yaml"
    path.write_text(CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_shows_reasons_chain_endpoints_and_split(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(config), "GET",
                       "http://reviews:9080/reviews/1?x=1")
    assert code == 0
    assert "route ratings: host 'reviews' != 'ratings'" in out
    assert "route reviews-jason: header end-user is missing (wanted exact 'jason')" in out
    assert "-> route reviews: matched" in out
    assert "cluster reviews (round_robin), timeout 3s" in out
    assert "1. faketracing 1.2.3 [listener]: sampling=0.1" in out
    assert '2. fakeretry 1.2.3 (requires >=1) [route]: attempts=3' in out
    assert "127.0.0.1:9083  {version=v3}" in out
    assert "sticky on header:end-user" in out
    assert "90.00%  reviews/v1 (weight 90): 127.0.0.1:9081" in out
    assert "10.00%  reviews/v2 (weight 10): 127.0.0.1:9082" in out
    assert "listener inbound (127.0.0.1:15006):" in out
    assert "route local: path '/reviews/1' != '/health'" in out


def test_path_with_host_header_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--json", "-c", str(config), "get", "/reviews/7",
                       "-H", "Host: reviews", "-H", "end-user: jason")
    assert code == 0
    result = json.loads(out)
    outbound = result["listeners"][0]
    assert [t["route"] for t in outbound["tried"]] == ["ratings", "reviews-jason"]
    match = outbound["match"]
    assert match["route"] == "reviews-jason"
    (split,) = match["splits"]
    assert [(d["subset"], d["percent"]) for d in split["destinations"]] == [
        ("v2", 50.0), ("v3", 50.0)]
    assert [c["name"] for c in match["chain"]] == ["faketracing", "fakesplit"]
    assert result["listeners"][1]["match"] is None


def test_method_mismatch_and_no_match_exit_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(config), "POST", "http://reviews/reviews")
    assert code == 1
    assert "route reviews: method POST not in GET" in out
    assert "no listener has a route for this request" in out


@pytest.mark.parametrize(("url", "headers", "text"), [
    ("reviews/x", [], "neither an absolute URL"),
    ("http:///x", [], "has no host"),
    ("/x", ["no-colon-here"], "is not 'name: value'"),
])
def test_bad_requests_are_explained(
    config: Path, capsys: pytest.CaptureFixture[str], url: str, headers: list[str], text: str
) -> None:
    args = ["explain", "-c", str(config), "GET", url]
    for header in headers:
        args += ["-H", header]
    code, _, err = run(capsys, *args)
    assert code == 1
    assert text in err


def test_invalid_config_lists_errors(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(CONFIG.replace("cluster: ratings\n      - name: reviews-jason",
                                     "cluster: nope\n      - name: reviews-jason"))
    code, _, err = run(capsys, "explain", "-c", str(config), "GET", "http://ratings/")
    assert code == 1
    assert "is not a valid config" in err and "'nope', which is not defined" in err
