"""Transparent capture end to end, in a network namespace of its own: ``sidemesh
iptables --apply`` redirects an unmodified client's calls to a service's virtual address
through the sidecar, which routes them by their original destination, while the
sidecar's own upstream connections (it runs as uid 1337) leave uncaptured.

The test re-runs this file under ``unshare -n`` (:func:`child`); the virtual and
instance addresses are 127.x addresses on that namespace's loopback, so nothing leaves
the machine and the host's iptables are never touched."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

PROXY_UID = 1337
OUTBOUND, INBOUND, ADMIN = 15001, 15006, 15000
REVIEWS_VIP, RATINGS_VIP = "127.10.0.1", "127.10.0.2"
#: the instances' own addresses: captured like any other, unlike 127.0.0.1.
REVIEWS_POD, RATINGS_POD = "127.0.0.2", "127.0.0.3"
#: inbound: a second namespace (another pod) reaches this one over a veth pair, on
#: documentation addresses (RFC 5737) that exist only on that pair.
POD_IP, PEER_IP, APP_PORT, STATUS_PORT = "192.0.2.1", "192.0.2.2", 9080, 15021


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (unshare -n, iptables)"
    for tool in ("unshare", "setpriv", "ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./dev installs iptables)"
    return None


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    done = subprocess.run(["unshare", "-n", sys.executable, __file__], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def test_a_client_calling_a_virtual_address_reaches_that_service_through_the_sidecar(
    seen: dict[str, Any],
) -> None:
    assert seen["reviews"] == [200, "reviews-v1 saw host 127.10.0.1:9080"]
    assert seen["ratings"] == [200, "ratings-v1 saw host 127.10.0.2:7070"]
    # As in Envoy, the connection's local address is the one the client called.
    routes = [(line["route"], line["upstream"], line["status"], line["local"])
              for line in seen["log"]]
    assert ("to-reviews", seen["reviews_instance"], 200, f"{REVIEWS_VIP}:9080") in routes
    assert ("to-ratings", seen["ratings_instance"], 200, f"{RATINGS_VIP}:7070") in routes


def test_the_sidecars_own_upstream_connections_are_not_captured(
    seen: dict[str, Any],
) -> None:
    # Captured, the sidecar's call to the instance would come back to its own listener,
    # match no route and answer 404 in a second access-log line.
    assert seen["instance_hits"] == {"reviews": 1, "ratings": 2}
    assert len(seen["log"]) == seen["calls"]


def test_every_outbound_connection_of_the_app_goes_through_the_sidecar(
    seen: dict[str, Any],
) -> None:
    # An instance's own address is no service's: no route, 404 with flag NR.
    assert seen["instance_direct"][0] == 404
    [line] = [line for line in seen["log"] if line["host"] == seen["reviews_instance"]]
    assert (line["route"], line["response_flags"]) == (None, "NR")


def test_a_connection_made_to_the_listener_itself_is_routed_by_host_and_never_loops(
    seen: dict[str, Any],
) -> None:
    assert seen["direct_by_host"] == [200, "ratings-v1 saw host ratings.local"]
    # Without a redirect there is no original destination: the destination route does
    # not match, and nothing is sent anywhere.
    assert seen["direct_no_route"][0] == 404
    local = {line["host"]: line["local"] for line in seen["log"]}
    assert local["ratings.local"] == f"127.0.0.1:{OUTBOUND}"


def test_inbound_connections_to_the_app_port_reach_the_app_through_the_sidecar(
    seen: dict[str, Any],
) -> None:
    assert seen["inbound"] == [200, f"productpage-app saw host {POD_IP}:{APP_PORT}"]
    [line] = [line for line in seen["log"] if line["route"] == "inbound-app"]
    assert (line["upstream"], line["client"].split(":")[0], line["local"]) == (
        seen["app_instance"], PEER_IP, f"{POD_IP}:{APP_PORT}")


def test_an_excluded_inbound_port_is_not_captured(seen: dict[str, Any]) -> None:
    assert seen["status"] == [200, f"status saw host {POD_IP}:{STATUS_PORT}"]
    assert not [line for line in seen["log"] if str(line["host"]).endswith(f":{STATUS_PORT}")]


def test_the_rules_are_removed_by_clean(seen: dict[str, Any]) -> None:
    assert seen["after_clean"] == "no SIDEMESH chain left"


# -- the part that runs inside the namespace --------------------------------------------

class _Instance(ThreadingHTTPServer):
    def __init__(self, name: str, host: str, port: int = 0) -> None:
        self.name = name
        self.hits = 0
        super().__init__((host, port), _Answer)

    @property
    def address(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Instance)
        server.hits += 1
        body = f"{server.name} saw host {self.headers.get('host')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _get(host: str, port: int, header: str | None = None) -> list[Any]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/", headers={"host": header} if header else {})
        response = conn.getresponse()
        return [response.status, response.read().decode()]
    finally:
        conn.close()


def _config(reviews: str, ratings: str, app: str) -> dict[str, Any]:
    return {
        "node": {"service": "productpage"},
        "admin": f"127.0.0.1:{ADMIN}",
        "access_log": {"json_format": {
            "route": "%ROUTE_NAME%", "upstream": "%UPSTREAM_HOST%", "status": "%RESPONSE_CODE%",
            "response_flags": "%RESPONSE_FLAGS%", "host": "%REQ(:AUTHORITY)%",
            "client": "%DOWNSTREAM_REMOTE_ADDRESS%", "local": "%DOWNSTREAM_LOCAL_ADDRESS%"}},
        "clusters": [{"name": "reviews", "endpoints": [{"address": reviews}]},
                     {"name": "ratings", "endpoints": [{"address": ratings}]},
                     {"name": "app", "endpoints": [{"address": app}]}],
        "listeners": [{
            "name": "inbound", "address": f"0.0.0.0:{INBOUND}", "use_original_dst": True,
            "routes": [{"name": "inbound-app", "match": {"destination_port": APP_PORT},
                        "cluster": "app"}],
        }, {
            "name": "outbound", "address": f"127.0.0.1:{OUTBOUND}", "use_original_dst": True,
            "routes": [
                {"name": "to-reviews", "match": {"destination": f"{REVIEWS_VIP}:9080"},
                 "cluster": "reviews"},
                {"name": "to-ratings", "match": {"destination": RATINGS_VIP},
                 "cluster": "ratings"},
                {"name": "by-host", "match": {"host": "ratings.local"}, "cluster": "ratings"},
            ],
        }],
    }


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited {proc.returncode}")
        try:
            if _get("127.0.0.1", ADMIN)[0] in (200, 404):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the sidecar's admin API did not answer")


class _Peer:
    """Another network namespace joined to this one by a veth pair."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "120"])
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == mine:
            if time.monotonic() > deadline:
                raise RuntimeError("the peer namespace did not appear")
            time.sleep(0.01)
        self.run("ip", "link", "add", "sm-pod", "type", "veth", "peer", "name", "sm-peer",
                 "netns", str(self.holder.pid), inside=False)
        self.run("ip", "addr", "add", f"{POD_IP}/30", "dev", "sm-pod", inside=False)
        self.run("ip", "link", "set", "sm-pod", "up", inside=False)
        self.run("ip", "addr", "add", f"{PEER_IP}/30", "dev", "sm-peer")
        self.run("ip", "link", "set", "sm-peer", "up")

    def run(self, *argv: str, inside: bool = True) -> str:
        prefix = ["nsenter", "-t", str(self.holder.pid), "-n"] if inside else []
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def get(self, port: int) -> list[Any]:
        code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
               f"from test_capture_netns import _get; print(json.dumps(_get({POD_IP!r}, {port})))"
        return list(json.loads(self.run(sys.executable, "-c", code)))

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(5)


def child() -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    probe = subprocess.run(["iptables", "-t", "nat", "-L", "-n"], capture_output=True,
                           text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return {"skip": f"no iptables nat table in a network namespace here: "
                        f"{probe.stderr.strip()}"}
    sidemesh = [sys.executable, "-m", "sidemesh"]
    work = Path(tempfile.mkdtemp(prefix="sidemesh-capture-"))
    # The sidecar runs as PROXY_UID: it reads its config and writes its log here.
    os.chown(work, PROXY_UID, PROXY_UID)
    reviews, ratings = _Instance("reviews-v1", REVIEWS_POD), _Instance("ratings-v1", RATINGS_POD)
    app = _Instance("productpage-app", "127.0.0.1")
    status = _Instance("status", "0.0.0.0", STATUS_PORT)
    instances = [reviews, ratings, app, status]
    for instance in instances:
        threading.Thread(target=instance.serve_forever, daemon=True).start()
    (work / "sidemesh.yaml").write_text(yaml.safe_dump(_config(reviews.address,
                                                               ratings.address, app.address)))
    log = work / "access.log"
    proxy = subprocess.Popen(
        ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups",
         *sidemesh, "proxy", "-c", str(work / "sidemesh.yaml"), "--access-log", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
        env={**os.environ, "HOME": str(work)})
    seen: dict[str, Any] = {"reviews_instance": reviews.address,
                            "ratings_instance": ratings.address, "app_instance": app.address}
    peer: _Peer | None = None
    try:
        _wait_ready(proxy)
        subprocess.run([*sidemesh, "iptables", "--apply", "--uid", str(PROXY_UID),
                        "--outbound-port", str(OUTBOUND), "--inbound-port", str(INBOUND),
                        "--exclude-inbound-ports", str(STATUS_PORT)],
                       check=True, capture_output=True, timeout=60)
        seen["reviews"] = _get(REVIEWS_VIP, 9080)
        seen["ratings"] = _get(RATINGS_VIP, 7070)
        seen["instance_direct"] = _get(REVIEWS_POD, reviews.server_address[1])
        seen["direct_by_host"] = _get("127.0.0.1", OUTBOUND, "ratings.local")
        seen["direct_no_route"] = _get("127.0.0.1", OUTBOUND, f"{REVIEWS_VIP}:9080")
        peer = _Peer()
        seen["inbound"] = peer.get(APP_PORT)
        seen["status"] = peer.get(STATUS_PORT)
        seen["calls"] = 6
        seen["instance_hits"] = {"reviews": reviews.hits, "ratings": ratings.hits}
        subprocess.run([*sidemesh, "iptables", "--clean"], check=True, capture_output=True,
                       timeout=60)
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
        seen["after_clean"] = "SIDEMESH still there" if "SIDEMESH" in rules \
            else "no SIDEMESH chain left"
    finally:
        if peer is not None:
            peer.close()
        proxy.terminate()
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)
        for instance in instances:
            instance.shutdown()
            instance.server_close()
        seen["log"] = [json.loads(line) for line in log.read_text().splitlines()
                       if line.strip()]
        shutil.rmtree(work, ignore_errors=True)
    return seen


if __name__ == "__main__":
    print(json.dumps(child()))
