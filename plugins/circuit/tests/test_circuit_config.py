"""The circuit's config as Envoy reads outlier detection: max_ejection_time below
base_ejection_time is refused (by `validate`, the control plane and a sidecar alike),
and left out it is 300s or base_ejection_time, whichever is longer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh import testing


def doc(*addresses: str, **circuit: Any) -> dict[str, Any]:
    return testing.simple_config(
        *addresses or ("127.0.0.1:9",), plugins=[{"name": "circuit", "config": circuit}]
    )


def test_max_ejection_time_below_base_ejection_time_is_an_error() -> None:
    (error,) = testing.validate_config(doc(base_ejection_time="1m30s", max_ejection_time="1m"))
    assert error.path == "listeners[0].routes[0].plugins[0].config"
    assert (error.plugin, error.rule) == ("circuit", "check_config")
    assert error.message.startswith(
        "max_ejection_time (1m) must not be shorter than base_ejection_time (1m30s)"
    )
    with pytest.raises(testing.ConfigInvalid, match="must not be shorter"):
        testing.build_config(doc(base_ejection_time="30s", max_ejection_time="29.5s"))


@pytest.mark.parametrize(
    "circuit",
    [
        {"base_ejection_time": "30s", "max_ejection_time": "30s"},
        {"base_ejection_time": "1.5m", "max_ejection_time": "1h2m"},
        {"base_ejection_time": "10m"},  # longer than the default 300s: that is no error
        {"max_ejection_time": "30s"},  # the default base
    ],
)
def test_max_ejection_time_at_or_above_base_is_valid(circuit: dict[str, Any]) -> None:
    assert testing.validate_config(doc(**circuit)) == []


def test_the_control_plane_refuses_it_with_422(tmp_path: Path) -> None:
    bad = doc(base_ejection_time="2m", max_ejection_time="1m")
    with testing.control.ControlServer(tmp_path) as cp:
        answer = httpx.put(
            f"{cp.url}/v1/services/test/config", json=bad, headers=cp.admin, timeout=5
        )
        assert answer.status_code == 422
        (error,) = answer.json()["errors"]
        assert error["plugin"] == "circuit" and "must not be shorter" in error["message"]


def test_left_out_it_is_base_ejection_time_when_that_is_longer_than_300s() -> None:
    with (
        testing.Upstream(lambda _: testing.Reply(503)) as bad,
        testing.Upstream() as good,
        testing.running_sidecar(
            doc(
                bad.address,
                good.address,
                consecutive_5xx=2,
                base_ejection_time="10m",
                max_ejection_percent=50,
            )
        ) as sc,
    ):
        for _ in range(4):
            httpx.get(sc.url("main") + "/", timeout=10)
        (host,) = [e for e in sc.cluster("backend").endpoints if e.address == bad.address]
        assert host.ejected
        # The first ejection lasts base_ejection_time: 10 minutes, not the 300s default.
        assert 590 < host.ejected_until - time.monotonic() <= 600
