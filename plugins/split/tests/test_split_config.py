"""A split's config is checked before anything is applied: schema rules and references
to clusters and subsets, each error with the path of the chain entry and the
destination's index."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

import sidemesh_split
from sidemesh import testing

ENTRY = "listeners[0].routes[0].plugins[0].config"


def bookinfo(split: dict[str, Any], listener_split: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "node": {"service": "productpage"},
        "clusters": [
            {
                "name": "reviews",
                "endpoints": [
                    {"address": "127.0.0.1:9081", "labels": {"version": "v1"}},
                    {"address": "127.0.0.1:9082", "labels": {"version": "v2"}},
                ],
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ],
            },
            {"name": "ratings", "endpoints": [{"address": "127.0.0.1:9090"}]},
        ],
        "listeners": [
            {
                "name": "outbound",
                "address": "127.0.0.1:0",
                "plugins": [] if listener_split is None else [
                    {"name": "split", "config": listener_split}
                ],
                "routes": [
                    {
                        "name": "reviews",
                        "match": {"prefix": "/"},
                        "cluster": "reviews",
                        "plugins": [{"name": "split", "config": split}],
                    }
                ],
            }
        ],
    }


def errors_of(split: dict[str, Any]) -> list[testing.ConfigError]:
    return testing.validate_config(bookinfo(split))


def test_a_valid_split_builds_with_defaults_filled() -> None:
    config = testing.build_config(
        bookinfo({"destinations": [{"subset": "v1"}, {"subset": "v2", "weight": 0}]}))
    (entry,) = config.listeners[0].routes[0].chain
    assert entry.config == {
        "destinations": [{"subset": "v1", "weight": 1}, {"subset": "v2", "weight": 0}],
        "hash_on": None,
        "mirror": None,
    }


def test_unknown_subset_names_the_destination_index() -> None:
    errors = errors_of({"destinations": [{"subset": "v1", "weight": 90},
                                                   {"subset": "v3", "weight": 10}]})
    assert [(e.path, e.message, e.plugin) for e in errors] == [(
        ENTRY,
        "destinations[1].subset 'v3' is not a subset of cluster 'reviews' (subsets: v1, v2)",
        "split",
    )]
    assert errors[0].plugin_version == sidemesh_split.__version__


def test_unknown_cluster_and_subset_of_another_cluster() -> None:
    errors = errors_of({"destinations": [{"cluster": "details", "weight": 50},
                                                   {"cluster": "ratings", "subset": "v1"}]})
    assert [e.message for e in errors] == [
        "destinations[0].cluster 'details' is not a defined cluster (clusters: ratings, reviews)",
        "destinations[1].subset 'v1' is not a subset of cluster 'ratings' (subsets: none)",
    ]
    assert {e.path for e in errors} == {ENTRY}


def test_weights_that_sum_to_zero() -> None:
    errors = errors_of({"destinations": [{"subset": "v1", "weight": 0},
                                                   {"subset": "v2", "weight": 0}]})
    assert [e.message for e in errors] == [
        "destinations: the weights sum to 0; give at least one destination a weight above 0"
    ]


def test_subset_without_a_matching_endpoint() -> None:
    doc = bookinfo({"destinations": [{"subset": "v3"}]})
    doc["clusters"][0]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    messages = {(e.path, e.message) for e in testing.validate_config(doc)}
    assert (ENTRY, "destinations[0].subset 'v3' of cluster 'reviews' selects no endpoint") \
        in messages
    # The core reports the cluster's own problem at the cluster, too.
    assert any(path == "clusters[0].subsets[2]" for path, _ in messages)


def test_mirror_references_are_checked() -> None:
    errors = errors_of({"destinations": [{"subset": "v1"}],
                                  "mirror": {"subset": "v9", "percent": 10}})
    assert [e.message for e in errors] == [
        "mirror.subset 'v9' is not a subset of cluster 'reviews' (subsets: v1, v2)"
    ]


def test_a_destination_must_name_a_subset_or_a_cluster() -> None:
    errors = errors_of({"destinations": [{"subset": "v1"}, {"weight": 10}],
                                  "mirror": {"percent": 5}})
    assert [(e.path, e.message) for e in errors] == [
        (ENTRY, "destinations[1] names neither a subset nor a cluster; give subset, cluster "
                "or both"),
        (ENTRY, "mirror names neither a subset nor a cluster; give subset, cluster or both"),
    ]


@pytest.mark.parametrize(
    ("split", "path", "rule"),
    [
        ({"destinations": []}, ".destinations", "minItems"),
        ({}, "", "required"),
        ({"destinations": [{"subset": "v1", "weight": -1}]}, ".destinations[0].weight", "minimum"),
        ({"destinations": [{"subset": "v1", "weight": 10001}]}, ".destinations[0].weight",
         "maximum"),
        ({"destinations": [{"subset": "v1", "weight": 0.5}]}, ".destinations[0].weight", "type"),
        ({"destinations": [{"subset": "v1", "host": "reviews"}]}, ".destinations[0].host",
         "additionalProperties"),
        ({"destinations": [{"subset": "v1"}], "hash_on": "query:user"}, ".hash_on", "pattern"),
        ({"destinations": [{"subset": "v1"}], "mirror": {"cluster": "ratings", "percent": 101}},
         ".mirror.percent", "maximum"),
    ],
)
def test_schema_errors_have_paths(split: dict[str, Any], path: str, rule: str) -> None:
    errors = errors_of(split)
    assert [(e.path, e.rule, e.plugin) for e in errors] == [(ENTRY + path, rule, "split")], errors


def test_a_listener_level_split_is_checked_against_each_route_when_applied() -> None:
    """Validation cannot know which routes a listener entry serves; applying it makes
    one instance per route, and a route whose cluster lacks the subset rejects the
    config as a whole (the running one stays: /ratings still goes to reviews' v2)."""
    with testing.Upstream(lambda _: testing.Reply(body=b"v2")) as v2:
        doc = bookinfo({"destinations": [{"subset": "v1"}]}, listener_split={
            "destinations": [{"subset": "v2"}]})
        doc["clusters"][0]["endpoints"][1]["address"] = v2.address
        doc["listeners"][0]["routes"][0]["plugins"] = []
        assert testing.validate_config(doc) == []
        bad = copy.deepcopy(doc)
        bad["listeners"][0]["routes"].insert(0, {
            "name": "ratings", "match": {"prefix": "/ratings"}, "cluster": "ratings"})
        assert testing.validate_config(bad) == []
        with testing.running_sidecar(doc) as sidecar:
            with pytest.raises(Exception, match=r"destinations\[0\]\.subset 'v2' selects no "
                                                r"endpoint of cluster 'ratings'"):
                sidecar.apply(bad)
            answer = httpx.get(sidecar.url("outbound") + "/ratings", timeout=5)
        assert (answer.status_code, answer.text) == (200, "v2")
