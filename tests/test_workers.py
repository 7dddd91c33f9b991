"""``sidemesh proxy --concurrency N`` as real processes: N workers on one port, one admin
API that sums them, reloads every worker applies, one control-plane watcher, drain on
SIGTERM, a killed worker restarted, and one worker by default."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for
from sidemesh.testing.control import ControlServer


def _doc(upstream: str, listen: int, admin: int, prefix: str = "/") -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "connect_timeout": "1s",
                      "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": prefix},
                                   "cluster": "app"}]}],
    }


def _get(url: str) -> httpx.Response:
    # A connection per request: SO_REUSEPORT spreads connections, not requests.
    with httpx.Client(timeout=10) as client:
        return client.get(url)


def _workers(admin: str) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = httpx.get(admin + "/workers", timeout=10).json()["workers"]
    return workers


def _until_both_served(url: str, admin: str, limit: int = 300) -> int:
    """Send requests until each of the two workers answered some; how many were sent."""
    for sent in range(1, limit + 1):
        assert _get(url).status_code == 200
        if sent % 10 == 0 and all(w["requests"] for w in _workers(admin)):
            return sent
    raise AssertionError(f"one worker served none of {limit} requests: {_workers(admin)}")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


@contextlib.contextmanager
def _proxy(tmp_path: Path, upstream: str, *extra: str,
           prefix: str = "/") -> Iterator[tuple[ProxyProcess, Path, str, str]]:
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    config.write_text(yaml.safe_dump(_doc(upstream, listen, admin, prefix)))
    with ProxyProcess("proxy", "-c", str(config), "--access-log", "off", *extra) as proc:
        base = f"http://127.0.0.1:{admin}"
        proc.wait_http(base + "/ready", timeout=60)
        yield proc, config, f"http://127.0.0.1:{listen}", base


def test_two_workers_share_the_port_and_the_admin_api_sums_them(tmp_path: Path) -> None:
    status = free_port()
    with Upstream(lambda r: Reply(body=b"hi")) as up, \
            _proxy(tmp_path, up.address, "--concurrency", "2", "--status-port", str(status),
                   "--status-address", "127.0.0.1") as (proc, _, url, admin):
        sent = _until_both_served(url + "/a", admin)
        workers = _workers(admin)
        assert proc.proc is not None
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2 and pids <= _children(proc.proc.pid)
        assert sum(w["requests"] for w in workers) == sent
        metrics = httpx.get(admin + "/metrics", timeout=10).text
        line = 'sidemesh_requests_total{cluster="app",code="200",listener="inbound",route="app"}'
        assert f"{line} {float(sent)}" in metrics
        # What every worker reports alike is there once, not summed.
        assert 'sidemesh_config_info{source="file:' in metrics
        info = next(v for v in metrics.splitlines() if v.startswith("sidemesh_config_info"))
        assert info.endswith(" 1.0")
        clusters = httpx.get(admin + "/clusters", timeout=10).json()["clusters"]
        assert [c["name"] for c in clusters] == ["app"]
        assert clusters[0]["endpoints"][0]["address"] == up.address
        assert clusters[0]["connections"] >= 2  # each worker keeps its own pool
        # The status port (kubelet, Prometheus) answers for all the workers too.
        assert httpx.get(f"http://127.0.0.1:{status}/healthz/ready", timeout=10).text == "ready\n"
        scraped = httpx.get(f"http://127.0.0.1:{status}/stats/prometheus", timeout=10).text
        assert f"{line} {float(sent)}" in scraped
        dump = httpx.get(admin + "/config_dump", timeout=10).json()
        assert dump["workers"] == 2 and dump["config"]["node"]["service"] == "web"


def test_reload_is_applied_by_every_worker_and_a_bad_file_refused_once(tmp_path: Path) -> None:
    with Upstream() as up, _proxy(tmp_path, up.address, "--concurrency", "2") as (
            proc, config, url, admin):
        first = httpx.get(admin + "/config_dump", timeout=10).json()["version"]
        config.write_text(yaml.safe_dump(_doc(up.address, int(url.rsplit(":", 1)[1]),
                                              int(admin.rsplit(":", 1)[1]), prefix="/b")))
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.get(admin + "/config_dump", timeout=10)
                        .json()["version"] != first, timeout=20)
        # Every connection, whichever worker takes it, runs the new routes.
        assert {_get(url + "/a").status_code for _ in range(40)} == {404}
        assert {_get(url + "/b").status_code for _ in range(10)} == {200}
        second = httpx.get(admin + "/config_dump", timeout=10).json()["version"]

        config.write_text("listeners: [\n")
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: "reload of" in proc.output, timeout=20)
        time.sleep(0.5)
        assert proc.output.count("reload of") == 1
        assert httpx.get(admin + "/config_dump", timeout=10).json()["version"] == second
        assert {_get(url + "/b").status_code for _ in range(20)} == {200}

        # Valid, but no worker can bind its new listener (the port is taken without
        # SO_REUSEPORT): refused once, every worker keeps the running config.
        with socket.create_server(("127.0.0.1", 0)) as taken:
            doc = _doc(up.address, int(url.rsplit(":", 1)[1]), int(admin.rsplit(":", 1)[1]),
                       prefix="/c")
            doc["listeners"].append({**copy.deepcopy(doc["listeners"][0]), "name": "extra",
                                     "address": f"127.0.0.1:{taken.getsockname()[1]}"})
            config.write_text(yaml.safe_dump(doc))
            proc.signal(signal.SIGHUP)
            assert wait_for(lambda: "failed, keeping the running config" in proc.output,
                            timeout=20)
            time.sleep(0.5)
            assert proc.output.count("failed, keeping the running config") == 1
        assert httpx.get(admin + "/config_dump", timeout=10).json()["version"] == second
        assert {_get(url + "/c").status_code for _ in range(20)} == {404}
        assert {_get(url + "/b").status_code for _ in range(20)} == {200}


def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path) -> None:
    answers: list[int] = []

    def slow(path: str) -> None:
        answers.append(_get(path).status_code)

    with Upstream(lambda r: Reply(body=b"slow", delay=1.5)) as up, \
            _proxy(tmp_path, up.address, "--concurrency", "2", "--drain-timeout", "10s") as (
            proc, _, url, admin):
        threads: list[threading.Thread] = []
        for _ in range(30):
            thread = threading.Thread(target=slow, args=(url + "/slow",), daemon=True)
            thread.start()
            threads.append(thread)
            n = len(threads)
            assert wait_for(lambda n=n: len(up.requests) >= n, timeout=10)
            if all(w["active_requests"] for w in _workers(admin)):
                break
        assert all(w["active_requests"] for w in _workers(admin)), "one worker got nothing"
        pids = [w["pid"] for w in _workers(admin)]
        assert proc.stop(timeout=20) == 0
        for thread in threads:
            thread.join(10)
        assert answers == [200] * len(threads)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in \
                Path(f"/proc/{pid}/status").read_text()


def test_a_killed_worker_is_logged_and_restarted(tmp_path: Path) -> None:
    with Upstream() as up, _proxy(tmp_path, up.address, "--concurrency", "2") as (
            proc, _, url, admin):
        victim = _workers(admin)[1]
        os.kill(victim["pid"], signal.SIGKILL)

        def back() -> bool:
            worker = _workers(admin)[1]
            return bool(worker["serving"] and worker["pid"] != victim["pid"])

        assert wait_for(back, timeout=40)
        assert _workers(admin)[1]["restarts"] == 1
        assert f"worker 1 (pid {victim['pid']}) exited with -9" in proc.output
        assert httpx.get(admin + "/ready", timeout=10).status_code == 200
        _until_both_served(url + "/again", admin)


def test_one_watcher_follows_the_control_plane_for_every_worker(tmp_path: Path) -> None:
    listen, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    with Upstream(lambda r: Reply(body=b"up")) as up, ControlServer(tmp_path / "cp") as cp:
        token = tmp_path / "web.token"
        token.write_text(cp.token("web"))

        def put(prefix: str) -> None:
            answer = httpx.put(f"{cp.url}/v1/services/web/config",
                               json=_doc(up.address, listen, admin_port, prefix),
                               headers=cp.admin, timeout=10)
            assert answer.status_code == 200, answer.text

        def control_metric(name: str) -> float:
            text = httpx.get(cp.url + "/metrics", headers=cp.admin, timeout=10).text
            lines = [v for v in text.splitlines() if v.startswith(f'{name}{{service="web"}}')]
            return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

        put("/v1")
        with ProxyProcess("proxy", "--control", cp.url, "--service", "web", "--token-file",
                          str(token), "--state-dir", str(tmp_path / "state"),
                          "--access-log", "off", "--concurrency", "2") as proc:
            proc.wait_http(admin + "/ready", timeout=60)
            assert wait_for(lambda: control_metric("sidemesh_control_watchers") == 1.0)
            assert control_metric("sidemesh_control_pushes_total") == 1.0
            put("/v2")
            assert wait_for(lambda: control_metric("sidemesh_control_pushes_total") == 2.0)
            assert wait_for(lambda: _get(f"http://127.0.0.1:{listen}/v2").status_code == 200)
            url = f"http://127.0.0.1:{listen}"
            assert {_get(url + "/v1").status_code for _ in range(40)} == {404}
            _until_both_served(url + "/v2", admin)
            assert control_metric("sidemesh_control_watchers") == 1.0
            proxies = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=10).json()
            assert len(proxies["proxies"]) == 1 and proxies["proxies"][0]["state"] == "ACK"


def test_discovered_endpoints_reach_every_worker(tmp_path: Path) -> None:
    listen, admin_port = free_port(), free_port()
    admin, url = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{listen}"
    with Upstream(lambda r: Reply(body=b"one")) as one, \
            Upstream(lambda r: Reply(body=b"two")) as two, ControlServer(tmp_path / "cp") as cp:
        token = tmp_path / "web.token"
        token.write_text(cp.token("web"))
        doc = _doc(one.address, listen, admin_port)
        doc["clusters"] = [{"name": "app", "connect_timeout": "1s", "service": "backend"}]
        instances = f"{cp.url}/v1/services/backend/instances"
        backend = cp.headers("backend")

        def register(name: str, address: str) -> None:
            answer = httpx.put(f"{instances}/{name}", json={"address": address, "ttl": 60},
                               headers=backend, timeout=10)
            assert answer.status_code == 200, answer.text

        register("b-1", one.address)
        assert httpx.put(f"{cp.url}/v1/services/web/config", json=doc, headers=cp.admin,
                         timeout=10).status_code == 200
        with ProxyProcess("proxy", "--control", cp.url, "--service", "web", "--token-file",
                          str(token), "--state-dir", str(tmp_path / "state"),
                          "--access-log", "off", "--concurrency", "2") as proc:
            proc.wait_http(admin + "/ready", timeout=60)
            _until_both_served(url + "/", admin)
            register("b-2", two.address)
            assert httpx.delete(f"{instances}/b-1", headers=backend, timeout=10) \
                .status_code == 204
            assert wait_for(lambda: _get(url + "/").text == "two", timeout=20)
            # Whichever worker takes the connection, it has the new endpoints.
            assert {_get(url + "/").text for _ in range(40)} == {"two"}


def test_workers_drain_when_the_parent_is_killed(tmp_path: Path) -> None:
    with Upstream() as up, _proxy(tmp_path, up.address, "--concurrency", "2") as (
            proc, _, url, admin):
        pids = [w["pid"] for w in _workers(admin)]
        proc.signal(signal.SIGKILL)

        def gone(pid: int) -> bool:
            status = Path(f"/proc/{pid}/status")
            return not status.exists() or "zombie" in status.read_text()

        assert wait_for(lambda: all(gone(pid) for pid in pids), timeout=20)
        # Nothing listens on the port any more.
        try:
            _get(url + "/x")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("a worker still serves after its parent was killed")


def test_one_worker_is_the_plain_sidecar(tmp_path: Path) -> None:
    with Upstream() as up, _proxy(tmp_path, up.address) as (proc, _, url, admin):
        assert _get(url + "/x").status_code == 200
        assert proc.proc is not None and _children(proc.proc.pid) == set()
        assert httpx.get(admin + "/workers", timeout=10).status_code == 404
