"""Service discovery through the real control plane (SQLite and etcd) and real sidecars:
``reviews`` sidecars register themselves (with their --label), a ``productpage`` sidecar
whose config names ``service: reviews`` gets their endpoints pushed, and traffic
follows the instances as they come and go."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh.testing import ProxyProcess, free_port, wait_for
from sidemesh.testing.control import ControlServer
from sidemesh.testing.etcd import EtcdTestCluster

TTL = "3s"


class _App(ThreadingHTTPServer):
    """The local app of one reviews instance: answers its name (on 127.0.0.N:port, where
    that instance's sidecar, run with --bind-host 127.0.0.N, sends localhost:port)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                # One write, head and body: a sidecar SIGKILLed between the two would
                # leave its caller a response whose head is already downstream, which no
                # proxy can retry (Envoy neither). The tests kill sidecars under traffic
                # to show that retries cover the requests that can be retried.
                body = name.encode()
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                )

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((host, port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Mesh:
    def __init__(self, root: Path, cp: ControlServer, stack: contextlib.ExitStack) -> None:
        self.root, self.cp, self.stack = root, cp, stack
        self.app_port, self.reviews_port = free_port(), free_port()
        self.caller_port, self.caller_admin = free_port(), free_port()
        self.proxies: dict[str, ProxyProcess] = {}
        self.tokens: dict[str, Path] = {}
        self.put("reviews", {
            "node": {"service": "reviews"},
            "clusters": [{"name": "app", "endpoints": [
                {"address": f"localhost:{self.app_port}"}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{self.reviews_port}",
                           "routes": [{"name": "app", "match": {"prefix": "/"},
                                       "cluster": "app"}]}],
        })

    def put(self, service: str, doc: dict[str, Any]) -> None:
        answer = httpx.put(f"{self.cp.url}/v1/services/{service}/config", json=doc,
                           headers=self.cp.admin, timeout=10)
        assert answer.status_code == 200, answer.text

    def token(self, service: str) -> Path:
        if service not in self.tokens:
            path = self.root / f"{service}.token"
            path.write_text(self.cp.token(service))
            self.tokens[service] = path
        return self.tokens[service]

    def sidecar(self, proxy_id: str, service: str, *extra: str) -> ProxyProcess:
        args = ["proxy", "--control", self.cp.url, "--service", service, "--token-file",
                str(self.token(service)), "--state-dir", str(self.root / f"state-{proxy_id}"),
                "--proxy-id", proxy_id, "--access-log", "off", "--drain-timeout", "2s",
                "--register-ttl", TTL, *extra]
        proc = ProxyProcess(*args)
        self.stack.enter_context(proc)
        self.proxies[proxy_id] = proc
        return proc

    def reviews(self, number: int, version: str) -> None:
        """Instance ``reviews-N`` on 127.0.0.N+1, its app answering ``rN``."""
        host = f"127.0.0.{number + 1}"
        app = _App(host, self.app_port, f"r{number}")
        self.stack.callback(app.server_close)
        self.stack.callback(app.shutdown)
        self.sidecar(f"reviews-{number}", "reviews", "--bind-host", host,
                     "--label", f"version={version}")

    def caller(self, plugins: list[dict[str, Any]]) -> str:
        """A productpage sidecar sending to ``service: reviews``; its URL."""
        self.put("productpage", {
            "node": {"service": "productpage"},
            "admin": f"127.0.0.1:{self.caller_admin}",
            "clusters": [{"name": "reviews", "service": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}}]}],
            "listeners": [{"name": "outbound", "address": f"127.0.0.1:{self.caller_port}",
                           "routes": [{"name": "reviews", "match": {"prefix": "/"},
                                       "cluster": "reviews", "plugins": plugins}]}],
        })
        self.sidecar("productpage-1", "productpage")
        return f"http://127.0.0.1:{self.caller_port}/reviews"

    def endpoints(self) -> dict[str, dict[str, Any]]:
        answer = httpx.get(f"{self.cp.url}/v1/services/reviews/endpoints",
                           headers=self.cp.admin, timeout=5)
        assert answer.status_code == 200, answer.text
        return {e["id"]: e for e in answer.json()["endpoints"]}

    def registered(self, *ids: str) -> bool:
        return set(self.endpoints()) == set(ids)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdTestCluster]:
    with EtcdTestCluster(tmp_path_factory.mktemp("etcd"), members=1) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "etcd"])
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    store = request.getfixturevalue("etcd").store_url if request.param == "etcd" else None
    with (contextlib.ExitStack() as stack,
          ControlServer(tmp_path / "cp", store=store,
                        store_prefix=f"/t{time.monotonic_ns()}") as cp):
        yield Mesh(tmp_path, cp, stack)


class Traffic:
    """Steady requests through the caller, each answer (or failure) recorded in time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    answer = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:100]}")
                else:
                    self.seen.append((time.monotonic(), answer.text))
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def since(self, moment: float) -> Counter[str]:
        return Counter(name for at, name in list(self.seen) if at >= moment)


RETRY = {"name": "retry", "config": {"attempts": 3}}


def test_scaling_2_to_3_to_1_under_traffic_fails_no_request(mesh: Mesh) -> None:
    mesh.reviews(1, "v1")
    mesh.reviews(2, "v1")
    assert wait_for(lambda: mesh.registered("reviews-1", "reviews-2"), timeout=20)
    url = mesh.caller([RETRY])
    mesh.proxies["productpage-1"].wait_http(url)
    with Traffic(url) as traffic:
        assert wait_for(lambda: set(traffic.since(0)) == {"r1", "r2"}, timeout=10)
        mesh.reviews(3, "v1")
        assert wait_for(lambda: "reviews-3" in mesh.endpoints(), timeout=20)
        registered = time.monotonic()
        # Within one push: the caller's next answers already include the new instance.
        assert wait_for(lambda: "r3" in traffic.since(registered), timeout=2)
        first = min(at for at, name in list(traffic.seen) if name == "r3")
        print(f"new instance served {first - registered:+.3f}s from its registration")
        time.sleep(1.0)
        share = traffic.since(first)
        assert share["r3"] > sum(share.values()) / 6, share  # its share of round robin
        for number in (3, 2):
            mesh.proxies[f"reviews-{number}"].signal(signal.SIGTERM)
        assert wait_for(lambda: mesh.registered("reviews-1"), timeout=10)
        # The two keep serving through their deregister grace; from the caller's next
        # endpoint push on, nothing goes to them.
        assert wait_for(lambda: _reviews_endpoints(mesh) == [f"127.0.0.2:{mesh.reviews_port}"],
                        timeout=10)
        deregistered = time.monotonic()
        for number in (3, 2):
            proc = mesh.proxies[f"reviews-{number}"].proc
            assert proc is not None and proc.wait(15) == 0
        time.sleep(1.0)
    after = traffic.since(deregistered + 0.2)
    assert set(after) == {"r1"}, after
    assert not traffic.failures, traffic.failures[:5]
    assert len(traffic.seen) > 100
    # Endpoint updates only: the caller applied its config once and runs it still.
    admin = f"http://127.0.0.1:{mesh.caller_admin}"
    assert httpx.get(admin + "/config_dump", timeout=5).json()["version"] == "1"
    metrics = httpx.get(admin + "/metrics", timeout=5).text
    assert 'sidemesh_config_apply_total{result="ok"} 1.0' in metrics


def test_the_registry_api(mesh: Mesh) -> None:
    url = f"{mesh.cp.url}/v1/services/reviews"
    reviews, other = mesh.cp.headers("reviews"), mesh.cp.headers("ratings")
    body = {"address": "127.0.0.9:9080", "labels": {"version": "v3"}, "ttl": 1}
    assert httpx.put(f"{url}/instances/r-9", json=body, headers=other).status_code == 403
    assert httpx.put(f"{url}/instances/r-9", json=body, headers=reviews).status_code == 200
    assert httpx.get(f"{url}/endpoints", headers=other).status_code == 403
    assert mesh.endpoints()["r-9"]["labels"] == {"version": "v3"}
    # the identity listed is the one the service is issued, never one a caller claims
    assert mesh.endpoints()["r-9"]["identity"] == "spiffe://cluster.local/ns/default/sa/reviews"
    spoof = {**body, "identity": "spiffe://cluster.local/ns/default/sa/ratings"}
    refused = httpx.put(f"{url}/instances/r-8", json=spoof, headers=reviews)
    assert refused.status_code == 422, refused.text
    assert "is not the one service 'reviews' is issued" in refused.json()["error"]
    assert "r-8" not in mesh.endpoints()
    for _ in range(4):  # heartbeats keep it past its TTL
        time.sleep(0.5)
        assert httpx.put(f"{url}/instances/r-9", json=body, headers=reviews).status_code == 200
    assert "r-9" in mesh.endpoints()
    assert wait_for(lambda: "r-9" not in mesh.endpoints(), timeout=4)  # silent: expired
    assert httpx.put(f"{url}/instances/r-9", json=body, headers=reviews).status_code == 200
    assert httpx.delete(f"{url}/instances/r-9", headers=reviews).status_code == 204
    assert mesh.endpoints() == {}
    assert httpx.delete(f"{url}/instances/r-9", headers=reviews).status_code == 404


def _reviews_endpoints(mesh: Mesh) -> list[str]:
    """The reviews endpoints the caller sends to now."""
    clusters = httpx.get(f"http://127.0.0.1:{mesh.caller_admin}/clusters", timeout=5).json()
    listed = clusters["clusters"] if isinstance(clusters, dict) else clusters
    reviews = next(c for c in listed if c["name"] == "reviews")
    return [e["address"] for e in reviews["endpoints"]]


def test_a_killed_instance_is_removed_within_its_ttl_and_retries_cover(mesh: Mesh) -> None:
    mesh.reviews(1, "v1")
    mesh.reviews(2, "v1")
    assert wait_for(lambda: mesh.registered("reviews-1", "reviews-2"), timeout=20)
    url = mesh.caller([RETRY])
    mesh.proxies["productpage-1"].wait_http(url)
    with Traffic(url) as traffic:
        assert wait_for(lambda: set(traffic.since(0)) == {"r1", "r2"}, timeout=10)
        killed = time.monotonic()
        mesh.proxies["reviews-2"].signal(signal.SIGKILL)
        assert wait_for(lambda: mesh.registered("reviews-1"), timeout=6)
        gone = time.monotonic() - killed
        print(f"killed instance removed after {gone:.2f}s (TTL {TTL})")
        assert gone < 3.0 + 1.5
        time.sleep(0.5)
        after = traffic.since(time.monotonic() - 0.3)
    assert set(after) == {"r1"}, after
    assert not traffic.failures, traffic.failures[:5]


def test_subsets_and_a_90_10_split_over_discovered_instances(mesh: Mesh) -> None:
    mesh.reviews(1, "v1")
    mesh.reviews(2, "v2")
    assert wait_for(lambda: mesh.registered("reviews-1", "reviews-2"), timeout=20)
    assert mesh.endpoints()["reviews-2"]["labels"] == {"version": "v2"}
    assert mesh.endpoints()["reviews-2"]["identity"] == \
        "spiffe://cluster.local/ns/default/sa/reviews"
    url = mesh.caller([{"name": "split", "config": {"destinations": [
        {"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}}])
    mesh.proxies["productpage-1"].wait_http(url)
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        counts = Counter(client.get(url).text for _ in range(600))
    print(f"600 requests: {time.monotonic() - started:.1f}s")
    assert set(counts) == {"r1", "r2"}, counts
    assert 0.05 < counts["r2"] / 600 < 0.16, counts
    # A subset alone: v2 only.
    mesh.put("productpage", {**_caller_doc(mesh), "listeners": [{
        "name": "outbound", "address": f"127.0.0.1:{mesh.caller_port}",
        "routes": [{"name": "reviews", "match": {"prefix": "/"}, "cluster": "reviews",
                    "plugins": [{"name": "split", "config": {"destinations": [
                        {"subset": "v2"}]}}]}]}]})
    # Applied, not merely answered once by v2 (the 90/10 split does that one time in ten).
    admin = f"http://127.0.0.1:{mesh.caller_admin}"
    assert wait_for(lambda: httpx.get(admin + "/config_dump", timeout=5).json()["version"] == "2",
                    timeout=10)
    with httpx.Client(timeout=10) as client:
        assert {client.get(url).text for _ in range(50)} == {"r2"}


def _caller_doc(mesh: Mesh) -> dict[str, Any]:
    answer = httpx.get(f"{mesh.cp.url}/v1/services/productpage/config",
                       headers=mesh.cp.admin, timeout=5)
    config: dict[str, Any] = answer.json()["config"]
    return config



def test_a_sidecar_restarted_while_the_control_plane_is_down_keeps_its_endpoints(
        tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        cp = ControlServer(tmp_path / "cp").__enter__()
        try:
            mesh = Mesh(tmp_path, cp, stack)
            mesh.reviews(1, "v1")
            assert wait_for(lambda: mesh.registered("reviews-1"), timeout=20)
            url = mesh.caller([RETRY])
            mesh.proxies["productpage-1"].wait_http(url)
            assert httpx.get(url, timeout=5).text == "r1"
            assert mesh.proxies["productpage-1"].stop() == 0
        finally:
            cp.__exit__(None, None, None)
        # The caller's saved state has the config and reviews' endpoints.
        again = mesh.sidecar("productpage-2", "productpage", "--state-dir",
                             str(tmp_path / "state-productpage-1"))
        again.wait_http(url)
        assert httpx.get(url, timeout=5).text == "r1"
        assert "serving saved config" in again.output
