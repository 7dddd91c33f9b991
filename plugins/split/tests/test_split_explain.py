"""``sidemesh explain`` shows a split's weights and, for the request given, where its
sticky key lands -- asked of the plugin's own ``choose``, so it cannot disagree with
the data path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidemesh.tools.cli import main
from sidemesh_split import choose

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


@pytest.mark.parametrize("user", ["jason", "alice", "bob", "carol", "dave", "erin"])
def test_text_shows_where_the_sticky_key_lands(config: Path, user: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "-c", str(config), "GET", "http://reviews/r", "-H",
                 f"end-user: {user}"])
    out = capsys.readouterr().out
    assert code == 0
    assert " 50.00%  reviews/v1 (weight 50)" in out
    assert f"sticky key {user!r} -> {SHOWN[choose(DESTINATIONS, user)]}" in out


def test_without_the_key_the_choice_is_random(config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "-c", str(config), "GET", "http://reviews/r"]) == 0
    out = capsys.readouterr().out
    assert "no header:end-user in this request: random weighted choice" in out
    assert "sticky key" not in out


def test_json_names_the_destination_index(config: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--json", "-c", str(config), "GET", "http://reviews/r", "-H",
                 "end-user: jason"]) == 0
    (split,) = json.loads(capsys.readouterr().out)["listeners"][0]["match"]["splits"]
    assert split["sticky"] == {"key": "jason", "destination": choose(DESTINATIONS, "jason")}
