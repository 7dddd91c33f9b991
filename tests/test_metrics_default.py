"""``/metrics`` without ``telemetry``: sidemesh's request families as before, no
``istio_*``, and per-cluster gauges under Envoy's names that follow a request in flight,
from a real ``sidemesh proxy`` process."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sidemesh.testing import ProxyProcess, Reply, SeenRequest, Upstream, free_port, wait_for

#: Envoy's names for what ``/clusters`` shows (``connections``, ``active_requests``,
#: ``pending_requests``), with Envoy's label.
CLUSTER_GAUGES = {
    "envoy_cluster_upstream_cx_active",
    "envoy_cluster_upstream_rq_active",
    "envoy_cluster_upstream_rq_pending_active",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(admin: int) -> tuple[dict[str, str], Samples]:
    """(family type by name, sample values by name and labels)."""
    text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    families = list(text_string_to_metric_families(text))
    types = {f.name: f.type for f in families}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families for s in f.samples}
    return types, samples


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, (("envoy_cluster_name", "app"),))]


def test_default_metrics_are_sidemeshs_plus_cluster_gauges(tmp_path: Path) -> None:
    release = threading.Event()

    async def slow(request: SeenRequest) -> Reply:
        if request.path == "/slow":
            await asyncio.to_thread(release.wait, 10)
        return Reply()

    listen, admin = free_port(), free_port()
    config = tmp_path / "web.yaml"
    with Upstream(slow) as up:
        config.write_text(json.dumps({
            "node": {"service": "web"}, "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "app", "endpoints": [{"address": up.address}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}", "routes": [
                {"name": "app", "match": {"prefix": "/"}, "cluster": "app"}]}],
        }))  # fmt: skip
        with ProxyProcess("proxy", "-c", str(config)) as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            assert httpx.get(f"http://127.0.0.1:{listen}/a", timeout=5).status_code == 200
            result: list[int] = []

            def call() -> None:
                result.append(httpx.get(f"http://127.0.0.1:{listen}/slow", timeout=10).status_code)

            worker = threading.Thread(target=call)
            worker.start()
            try:
                in_flight = "envoy_cluster_upstream_rq_active"
                assert wait_for(lambda: gauge(scrape(admin)[1], in_flight) == 1)
                _, busy = scrape(admin)
            finally:
                release.set()
                worker.join(10)
            assert result == [200]
            # /slow went on the connection /a left open; nothing waited for one.
            assert gauge(busy, "envoy_cluster_upstream_cx_active") == 1
            assert gauge(busy, "envoy_cluster_upstream_rq_pending_active") == 0
            types, after = scrape(admin)
    assert gauge(after, "envoy_cluster_upstream_rq_active") == 0
    assert gauge(after, "envoy_cluster_upstream_cx_active") == 1
    assert not [name for name in types if name.startswith("istio_")]
    assert {name: kind for name, kind in types.items() if name.startswith("envoy_")} == {
        name: "gauge" for name in CLUSTER_GAUGES
    }
    labels = (("cluster", "app"), ("code", "200"), ("listener", "inbound"), ("route", "app"))
    assert after[("sidemesh_requests_total", labels)] == 2
    assert types["sidemesh_request_duration_seconds"] == "histogram"


def test_requests_are_counted_per_route_code_and_flag_when_routes_interleave(
    tmp_path: Path,
) -> None:
    # The counts keep the last request's route at hand: requests that alternate between
    # routes, and answers of the core's own (no route, a dead endpoint), must each land
    # in their own series all the same.
    listen, admin = free_port(), free_port()
    config = tmp_path / "web.yaml"
    with Upstream(lambda r: Reply(status=503 if r.path.endswith("/down") else 200)) as up:
        config.write_text(json.dumps({
            "node": {"service": "web"}, "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "app", "endpoints": [{"address": up.address}]},
                         {"name": "dead", "endpoints": [{"address": f"127.0.0.1:{free_port()}"}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}", "routes": [
                {"name": "a", "match": {"prefix": "/a"}, "cluster": "app"},
                {"name": "b", "match": {"prefix": "/b"}, "cluster": "app"},
                {"name": "gone", "match": {"prefix": "/gone"}, "cluster": "dead"}]}],
        }))  # fmt: skip
        with ProxyProcess("proxy", "-c", str(config)) as proc, httpx.Client(
                base_url=f"http://127.0.0.1:{listen}", timeout=5) as client:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            paths = ["/a", "/b", "/a", "/b/down", "/a", "/nowhere", "/a", "/gone", "/b"]
            assert [client.get(p).status_code for p in paths] == [
                200, 200, 200, 503, 200, 404, 200, 503, 200]
            _, samples = scrape(admin)

    def count(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    route = {"listener": "inbound", "cluster": "app"}
    assert count("sidemesh_requests_total", route="a", code="200", **route) == 4
    assert count("sidemesh_requests_total", route="b", code="200", **route) == 2
    assert count("sidemesh_requests_total", route="b", code="503", **route) == 1
    assert count("sidemesh_request_duration_seconds_count", route="a", **route) == 4
    assert count("sidemesh_request_duration_seconds_count", route="b", **route) == 3
    assert count("sidemesh_requests_total", listener="inbound", route="", cluster="",
                 code="404") == 1
    assert count("sidemesh_upstream_errors_total", listener="inbound", route="", cluster="",
                 flag="NR") == 1
    assert count("sidemesh_requests_total", listener="inbound", route="gone",
                 cluster="dead", code="503") == 1
    assert count("sidemesh_upstream_errors_total", listener="inbound", route="gone",
                 cluster="dead", flag="UF") == 1
