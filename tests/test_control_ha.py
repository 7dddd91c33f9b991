"""High availability end to end: two ``sidemesh control`` replicas on a real 3-member
etcd cluster, two real sidecars taking their config from them, steady traffic; the
replica the sidecars are attached to and one etcd member are killed (SIGKILL) while a
config PUT goes to the other replica."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for
from sidemesh.testing.etcd import EtcdTestCluster

ADMIN = "ha-test-admin-token"


def config(upstream: str, listen: int, admin: int) -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "connect_timeout": "1s",
                      "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }


class Traffic:
    """Requests through every sidecar, one after another, until stopped."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.bodies: dict[str, str] = {}
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 120  # bounded even if never stopped
            while not self._stop.is_set() and time.monotonic() < deadline:
                for url in self.urls:
                    try:
                        answer = client.get(url)
                        if answer.status_code != 200:
                            self.failures.append(f"{url}: {answer.status_code} {answer.text}")
                        self.bodies[url] = answer.text
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{url}: {exc!r}")
                    self.sent += 1
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _replica(data: Path, port: int, etcd: EtcdTestCluster, admin_file: Path) -> ProxyProcess:
    return ProxyProcess("control", "--store", etcd.store_url, "--data", str(data),
                        "--listen", f"127.0.0.1:{port}", "--admin-token-file", str(admin_file))


def _history(url: str) -> list[tuple[int, str]]:
    answer = httpx.get(f"{url}/v1/services/web/history", timeout=10,
                       headers={"authorization": f"Bearer {ADMIN}"})
    return [(v["version"], v["digest"]) for v in answer.json()["versions"]]


def test_losing_a_replica_and_an_etcd_member_loses_no_request_and_no_config(
    tmp_path: Path,
) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN + "\n")
    admin_file.chmod(0o600)
    port_a, port_b, listen, admin_port = free_port(), free_port(), free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    headers = {"authorization": f"Bearer {ADMIN}"}
    with (EtcdTestCluster(tmp_path / "etcd", members=3) as etcd,
          Upstream(lambda _: Reply(body=b"v1")) as one,
          Upstream(lambda _: Reply(body=b"v2")) as two,
          _replica(tmp_path / "a", port_a, etcd, admin_file) as replica_a,
          _replica(tmp_path / "b", port_b, etcd, admin_file) as replica_b):
        replica_a.wait_http(f"{url_a}/v1/tokens", status=401)
        replica_b.wait_http(f"{url_b}/v1/tokens", status=401)
        assert httpx.put(f"{url_a}/v1/services/web/config", headers=headers, timeout=10,
                         json=config(one.address, listen, admin_port)).json()["version"] == 1
        token = httpx.post(f"{url_a}/v1/tokens", json={"service": "web"}, headers=headers,
                           timeout=10).json()["token"]
        (tmp_path / "web.token").write_text(token)

        hosts = ["127.0.0.2", "127.0.0.3"]
        sidecars = [
            ProxyProcess("proxy", "--control", f"{url_a},{url_b}", "--service", "web",
                         "--token-file", str(tmp_path / "web.token"), "--bind-host", host,
                         "--state-dir", str(tmp_path / f"state-{host}"), "--access-log",
                         "off", "--drain-timeout", "1s")
            for host in hosts
        ]
        with sidecars[0] as first, sidecars[1] as second:
            for proxy, host in ((first, hosts[0]), (second, hosts[1])):
                proxy.wait_http(f"http://{host}:{admin_port}/ready")
            urls = [f"http://{host}:{listen}/" for host in hosts]
            with Traffic(urls) as traffic:
                assert wait_for(lambda: traffic.sent > 20, timeout=10)
                with ThreadPoolExecutor(1) as pool:
                    put = pool.submit(httpx.put, f"{url_b}/v1/services/web/config",
                                      headers=headers, timeout=30,
                                      json=config(two.address, listen, admin_port))
                    replica_a.signal(9)  # the replica both sidecars poll
                    etcd.kill(0)  # and the etcd member every replica talks to first
                    moved = put.result(timeout=40)
                assert moved.status_code == 200 and moved.json()["version"] == 2, moved.text
                # the PUT reaches every sidecar, through the surviving replica
                assert wait_for(lambda: all(traffic.bodies.get(u) == "v2" for u in urls),
                                timeout=30), (traffic.bodies, first.output, second.output)
                sent_at_switch = traffic.sent
                assert wait_for(lambda: traffic.sent > sent_at_switch + 20, timeout=10)
            assert traffic.failures == [], traffic.failures[:5]
            for host in hosts:
                dump = httpx.get(f"http://{host}:{admin_port}/config_dump", timeout=5).json()
                assert dump["version"] == "2"

        # history intact on both replicas (the killed one restarted), one CA for both
        with _replica(tmp_path / "a", port_a, etcd, admin_file) as restarted:
            restarted.wait_http(f"{url_a}/v1/tokens", status=401)
            assert _history(url_a) == _history(url_b)
            assert [v for v, _ in _history(url_a)] == [2, 1]
            bundles = {httpx.get(f"{u}/v1/trust-bundle", timeout=10).json()["trust_bundle"]
                       for u in (url_a, url_b)}
            assert len(bundles) == 1
