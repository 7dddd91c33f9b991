"""The example plugin in a real chain, through sidemesh.testing (what plugin authors copy)."""

from __future__ import annotations

import httpx

from sidemesh import testing
from sidemesh_header_policy import plugin

CONFIG = {
    "add": {"x-env": "prod"},
    "remove": ["x-debug"],
    "require": ["authorization"],
    "deny_paths": ["/admin"],
    "response_add": {"x-frame-options": "DENY"},
}


def test_headers_are_added_removed_required_and_paths_denied() -> None:
    doc = testing.simple_config("127.0.0.1:9", plugins=[{"name": "headers", "config": CONFIG}])
    with testing.Upstream(lambda r: testing.Reply(body=b"fine")) as up:
        doc["clusters"][0]["endpoints"] = [{"address": up.address}]
        with testing.running_sidecar(doc, [plugin]) as sc, httpx.Client(timeout=5) as client:
            ok = client.get(
                sc.url("main") + "/x",
                headers={"authorization": "Bearer t", "x-debug": "1", "x-env": "dev"},
            )
            assert ok.status_code == 200
            assert ok.headers["x-frame-options"] == "DENY"
            assert up.requests[0].headers["x-env"] == "prod"
            assert "x-debug" not in up.requests[0].headers

            missing = client.get(sc.url("main") + "/x")
            assert missing.status_code == 400
            assert missing.json()["headers"] == ["authorization"]

            denied = client.get(sc.url("main") + "/admin/users", headers={"authorization": "t"})
            assert denied.status_code == 403
        assert len(up.requests) == 1
