"""``sidemesh explain`` shows a split's weights and, for the request given, where its
sticky key lands -- through the policy's ``explain`` hook, which asks the plugin's own
chooser, so it cannot disagree with the data path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidemesh import Explanation, testing
from sidemesh_split import SplitPolicy, choose

CONFIG = """\
node: {service: productpage}
clusters:
  - name: reviews
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
  - name: ratings
    endpoints: [{address: 127.0.0.1:9090}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    routes:
      - name: reviews
        match: {host: reviews, prefix: /}
        cluster: reviews
        plugins:
          - name: split
            config:
              destinations: [{subset: v1, weight: 50}, {subset: v2, weight: 30},
                             {cluster: ratings, weight: 20}]
              hash_on: header:end-user
"""
DESTINATIONS = {"destinations": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 30},
                                 {"cluster": "ratings", "weight": 20}]}
SHOWN = ["subset v1", "subset v2", "cluster ratings"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sidemesh.yaml"
    path.write_text(CONFIG)
    return path


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert testing.run_cli("explain", *args) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("user", ["jason", "alice", "bob", "carol", "dave", "erin"])
def test_text_shows_where_the_sticky_key_lands(config: Path, user: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, "-c", str(config), "GET", "http://reviews/r", "-H",
                  f"end-user: {user}")
    assert "sends traffic by weight, sticky on header:end-user" in out
    assert " 50.00%  reviews/v1 (weight 50): 127.0.0.1:9081" in out
    assert " 20.00%  ratings (weight 20): 127.0.0.1:9090" in out
    assert f"sticky key {user!r} -> {SHOWN[choose(DESTINATIONS, user)]}" in out


def test_without_the_key_the_choice_is_random(config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, "-c", str(config), "GET", "http://reviews/r")
    assert "no header:end-user in this request: random weighted choice" in out
    assert "sticky key" not in out


def test_json_names_the_destination_index(config: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, "--json", "-c", str(config), "GET", "http://reviews/r", "-H",
                  "end-user: jason")
    (entry,) = json.loads(out)["listeners"][0]["match"]["chain"]
    data = entry["explanation"]["data"]
    assert data["sticky"] == {"key": "jason", "destination": choose(DESTINATIONS, "jason")}
    assert [(d["cluster"], d["subset"], d["percent"]) for d in data["destinations"]] == [
        ("reviews", "v1", 50.0), ("reviews", "v2", 30.0), ("ratings", None, 20.0)]


def explained(split: dict[str, Any], headers: list[tuple[str, str]]) -> Explanation:
    reviews = testing.make_cluster(
        "reviews", [("127.0.0.1:9081", {"version": "v1"}), ("127.0.0.1:9083", {"version": "v3"})],
        {"v1": {"version": "v1"}, "v3": {"version": "v3"}})
    ratings = testing.make_cluster("ratings", ["127.0.0.1:9090"], {"v3": {"version": "v3"}})
    context = testing.policy_context("split", cluster=reviews, clusters=[ratings])
    said = SplitPolicy.explain(split, testing.make_request(host="reviews", headers=headers),
                               context)
    assert said is not None
    return said


def test_the_mirror_and_a_subset_of_another_cluster() -> None:
    said = explained({"destinations": [{"cluster": "ratings", "subset": "v3", "weight": 1}],
                      "hash_on": "cookie:user", "mirror": {"subset": "v3", "percent": 5}},
                     [("cookie", "user=jason")])
    assert said.summary == "sends traffic by weight, sticky on cookie:user"
    assert said.details == [
        "100.00%  ratings/v3 (weight 1): NO ENDPOINTS",
        "sticky key 'jason' -> subset v3 of cluster ratings",
        "mirror: 5% of requests to reviews/v3: 127.0.0.1:9083",
    ]
    assert said.data["mirror"] == {"cluster": "reviews", "subset": "v3", "percent": 5.0,
                                   "endpoints": [{"address": "127.0.0.1:9083",
                                                  "labels": {"version": "v3"}}]}


def test_without_hash_on_nothing_is_sticky() -> None:
    said = explained({"destinations": [{"subset": "v1", "weight": 3},
                                       {"subset": "v3", "weight": 1}]}, [("end-user", "jason")])
    assert said.summary == "sends traffic by weight"
    assert said.details == [" 75.00%  reviews/v1 (weight 3): 127.0.0.1:9081",
                            " 25.00%  reviews/v3 (weight 1): 127.0.0.1:9083"]
    assert said.data["sticky"] is None
