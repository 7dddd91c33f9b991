"""Control-plane replicas on a real 3-member etcd cluster: shared configs, versions,
history, tokens, proxy ids and CA; a change on one replica wakes the polls of another;
an etcd member lost costs nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh.testing import free_port
from sidemesh.testing.control import ControlServer
from sidemesh.testing.etcd import EtcdTestCluster


def config(upstream: str = "127.0.0.1:9", service: str = "web", **node: Any
           ) -> dict[str, Any]:
    return {
        "node": {"service": service, **node},
        "clusters": [{"name": "app", "connect_timeout": "1s",
                      "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": "127.0.0.1:0",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sidemesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidemesh", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdTestCluster]:
    with EtcdTestCluster(tmp_path_factory.mktemp("etcd"), members=3) as cluster:
        yield cluster


@pytest.fixture()
def replicas(etcd: EtcdTestCluster, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[tuple[ControlServer, ControlServer]]:
    """Two replicas on the module's cluster, under a key prefix of their own."""
    prefix = f"/test/{request.node.name}"
    with (ControlServer(tmp_path / "a", store=etcd.store_url, store_prefix=prefix) as a,
          ControlServer(tmp_path / "b", store=etcd.store_url, store_prefix=prefix) as b):
        yield a, b


def _watch(cp: ControlServer, token: str, after: int, timeout: float = 20,
           proxy: str = "web-1") -> httpx.Response:
    return httpx.get(f"{cp.url}/v1/services/web/watch", headers=bearer(token),
                     params={"after": after, "timeout": timeout, "proxy": proxy},
                     timeout=timeout + 10)


def test_replicas_share_configs_history_tokens_and_the_ca(
    replicas: tuple[ControlServer, ControlServer],
) -> None:
    a, b = replicas
    assert httpx.put(f"{a.url}/v1/services/web/config", json=config("127.0.0.1:1"),
                     headers=a.admin, timeout=10).json()["version"] == 1
    assert httpx.put(f"{b.url}/v1/services/web/config", json=config("127.0.0.1:2"),
                     headers=b.admin, timeout=10).json()["version"] == 2
    back = httpx.post(f"{a.url}/v1/services/web/rollback", json={"version": 1},
                      headers=a.admin, timeout=10).json()
    assert (back["version"], back["rollback_of"]) == (3, 1)
    for replica in (a, b):
        history = httpx.get(f"{replica.url}/v1/services/web/history", headers=replica.admin,
                            timeout=10).json()["versions"]
        assert [(v["version"], v["rollback_of"]) for v in history] == [
            (3, 1), (2, None), (1, None)]
    # a token issued by one replica works on the other at once
    token = a.token("web")
    current = httpx.get(f"{b.url}/v1/services/web/config", headers=bearer(token), timeout=10)
    assert current.status_code == 200
    assert current.json()["config"]["clusters"][0]["endpoints"][0]["address"] == "127.0.0.1:1"
    # one CA for both: a sidecar's certificate from either verifies against either's bundle
    bundles = {httpx.get(f"{r.url}/v1/trust-bundle", timeout=10).json()["trust_bundle"]
               for r in (a, b)}
    assert len(bundles) == 1


def test_a_put_on_one_replica_wakes_polls_on_the_other(
    replicas: tuple[ControlServer, ControlServer],
) -> None:
    a, b = replicas
    assert httpx.put(f"{a.url}/v1/services/web/config", json=config(),
                     headers=a.admin, timeout=10).json()["version"] == 1
    token = a.token("web")
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(_watch, b, token, 1)
        time.sleep(0.5)  # parked on b
        started = time.monotonic()
        assert httpx.put(f"{a.url}/v1/services/web/config", json=config("127.0.0.1:7"),
                         headers=a.admin, timeout=10).json()["version"] == 2
        answer = poll.result(timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == 2
    assert time.monotonic() - started < 5  # woken by the etcd watch, not its 20 s timeout


def test_versions_stay_strictly_increasing_when_replicas_write_at_once(
    replicas: tuple[ControlServer, ControlServer],
) -> None:
    a, b = replicas

    def put(n: int) -> int:
        replica = (a, b)[n % 2]
        answer = httpx.put(f"{replica.url}/v1/services/web/config",
                           json=config(f"127.0.0.1:{1000 + n}"), headers=replica.admin,
                           timeout=30)
        assert answer.status_code == 200, answer.text
        version: int = answer.json()["version"]
        return version

    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(put, range(24)))
    assert sorted(versions) == list(range(1, 25))  # no version handed out twice
    history = httpx.get(f"{b.url}/v1/services/web/history", headers=b.admin,
                        timeout=10).json()["versions"]
    assert [v["version"] for v in history] == list(range(24, 0, -1))


def test_a_revocation_on_one_replica_cuts_polls_on_the_other(
    replicas: tuple[ControlServer, ControlServer],
) -> None:
    a, b = replicas
    assert httpx.put(f"{a.url}/v1/services/web/config", json=config(),
                     headers=a.admin, timeout=10).status_code == 200
    issued = httpx.post(f"{a.url}/v1/tokens", json={"service": "web"}, headers=a.admin,
                        timeout=10).json()
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(_watch, b, issued["token"], 1)
        time.sleep(0.5)
        started = time.monotonic()
        assert httpx.delete(f"{a.url}/v1/tokens/{issued['id']}", headers=a.admin,
                            timeout=10).status_code == 200
        answer = poll.result(timeout=30)
    assert answer.status_code == 401 and "was revoked at" in answer.json()["error"]
    assert time.monotonic() - started < 5
    listed = httpx.get(f"{b.url}/v1/tokens", headers=b.admin, timeout=10).json()["tokens"]
    assert [(t["id"], t["state"]) for t in listed] == [(issued["id"], "revoked")]


def test_a_proxy_id_is_bound_to_its_service_across_replicas(
    replicas: tuple[ControlServer, ControlServer],
) -> None:
    a, b = replicas
    for service in ("web", "api"):
        assert httpx.put(f"{a.url}/v1/services/{service}/config",
                         json=config(service=service), headers=a.admin,
                         timeout=10).status_code == 200
    report = {"service": "web", "state": "ACK", "version": 1, "plugins": []}
    assert httpx.post(f"{a.url}/v1/proxies/web-1/status", json=report,
                      headers=a.headers("web"), timeout=10).status_code == 200
    spoof = {**report, "service": "api", "state": "NACK", "error": "spoofed"}
    refused = httpx.post(f"{b.url}/v1/proxies/web-1/status", json=spoof,
                         headers=b.headers("api"), timeout=10)
    assert refused.status_code == 403 and "belongs to service 'web'" in refused.text
    [proxy] = httpx.get(f"{b.url}/v1/proxies", headers=b.admin, timeout=10).json()["proxies"]
    assert (proxy["id"], proxy["service"], proxy["state"]) == ("web-1", "web", "ACK")


def test_a_killed_etcd_member_costs_no_write_and_no_wake_up(tmp_path: Path) -> None:
    with (EtcdTestCluster(tmp_path / "etcd", members=3) as etcd,
          ControlServer(tmp_path / "a", store=etcd.store_url) as a,
          ControlServer(tmp_path / "b", store=etcd.store_url) as b):
        assert httpx.put(f"{a.url}/v1/services/web/config", json=config(),
                         headers=a.admin, timeout=10).json()["version"] == 1
        token = a.token("web")
        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(_watch, b, token, 1, 30)
            time.sleep(0.5)
            etcd.kill(0)  # the member both replicas use first, and their watches' member
            answer = httpx.put(f"{a.url}/v1/services/web/config", json=config("127.0.0.1:7"),
                               headers=a.admin, timeout=30)
            assert answer.status_code == 200 and answer.json()["version"] == 2, answer.text
            woken = poll.result(timeout=40)
        assert woken.status_code == 200 and woken.json()["version"] == 2
        history = httpx.get(f"{b.url}/v1/services/web/history", headers=b.admin,
                            timeout=10).json()["versions"]
        assert [v["version"] for v in history] == [2, 1]


def test_an_etcd_out_of_space_is_a_507_and_keeps_the_head(tmp_path: Path) -> None:
    # etcd's NOSPACE alarm, as on a full disk: its quota set just above its empty size.
    with (EtcdTestCluster(tmp_path / "etcd", members=1,
                          extra_args=("--quota-backend-bytes", str(2 * 1024 * 1024))) as etcd,
          ControlServer(tmp_path / "a", store=etcd.store_url) as a):
        url = f"{a.url}/v1/services/web/config"
        answers = []
        for n in range(40):
            doc = config(f"127.0.0.1:{n + 1}")
            doc["listeners"][0]["routes"][:0] = [
                {"name": f"r{i}", "match": {"prefix": f"/{n}/{i}/" + "x" * 200},
                 "cluster": "app"} for i in range(800)]
            answers.append(httpx.put(url, json=doc, headers=a.admin, timeout=30))
            if answers[-1].status_code != 200:
                break
        full = answers[-1]
        assert full.status_code == 507, full.text
        assert "database space exceeded" in full.json()["error"]
        head = httpx.get(url, headers=a.admin, timeout=10).json()
        assert head["version"] == len(answers) - 1  # the last good one, whole
        assert head["config"]["listeners"][0]["routes"][0]["match"]["prefix"].startswith(
            f"/{len(answers) - 2}/0/")


def test_the_commands_speak_etcd(etcd: EtcdTestCluster, tmp_path: Path) -> None:
    prefix = "/test/commands"
    issued = sidemesh("token", "--store", etcd.store_url, "--store-prefix", prefix,
                      "--data", str(tmp_path / "cli"), "--service", "web")
    assert issued.returncode == 0, issued.stderr
    printed = sidemesh("control", "--store", etcd.store_url, "--store-prefix", prefix,
                       "--data", str(tmp_path / "cli"), "--print-ca")
    assert printed.returncode == 0, printed.stderr
    with ControlServer(tmp_path / "a", store=etcd.store_url, store_prefix=prefix) as a:
        # the CA --print-ca created is the replica's, and the token works there
        bundle = httpx.get(f"{a.url}/v1/trust-bundle", timeout=10).json()["trust_bundle"]
        assert bundle == printed.stdout
        assert httpx.put(f"{a.url}/v1/services/web/config", json=config(),
                         headers=a.admin, timeout=10).status_code == 200
        assert httpx.get(f"{a.url}/v1/services/web/config", timeout=10,
                         headers=bearer(issued.stdout.strip())).status_code == 200


def test_an_unreachable_or_unknown_store_is_a_clear_error(tmp_path: Path) -> None:
    dead = f"etcd://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = sidemesh("control", "--store", dead, "--data", str(tmp_path),
                      "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert f"sidemesh control: etcd {dead.removeprefix('etcd://')} unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    bogus = sidemesh("control", "--store", "mysql://db", "--data", str(tmp_path))
    assert bogus.returncode == 2
    assert "use sqlite or etcd://host:port[,host:port...]" in bogus.stderr
    bad = sidemesh("token", "--store", "etcd://127.0.0.1:notaport", "--data", str(tmp_path),
                   "--service", "web")
    assert bad.returncode == 2 and "'127.0.0.1:notaport' is not host:port" in bad.stderr


def test_a_test_cluster_starts_when_a_port_it_picked_was_taken_meanwhile(
        tmp_path: Path) -> None:
    # CI once failed on this race: another test bound a picked port before etcd did.
    cluster = EtcdTestCluster(tmp_path / "etcd", members=1)
    taken = cluster.client_ports[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster as etcd:
            assert taken not in etcd.client_ports
            assert etcd.healthy(0)


def test_free_ports_are_drawn_below_the_ephemeral_range() -> None:
    # Outgoing connections take ephemeral ports; a picked port there can be gone by
    # the time etcd (or a sidecar) binds it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(free_port() < low for _ in range(50))
