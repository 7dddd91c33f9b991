"""The control plane and three sidecars (two services) as real processes, with real
upstreams: distribution, ACK/NACK, plugin version skew, rollback, and a control plane
killed under traffic."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh.testing import ProxyProcess, Reply, SeenRequest, Upstream, free_port, wait_for

WEB_IDS = ("web-1", "web-2")


def _skew_plugin(site: Path, version: str) -> None:
    """An installed distribution ``sidemesh-skew`` (entry point ``skew``) in ``site``:
    the control plane gets 2.0.0, the proxies 1.0.0."""
    package = site / "sidemesh_skew"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (package / "plugin.py").write_text(
        "from typing import Any, ClassVar\n"
        "from sidemesh import Policy, hookimpl\n\n"
        "class Skew(Policy):\n"
        '    name = "skew"\n'
        '    schema: ClassVar[dict[str, Any]] = {"type": "object", '
        '"additionalProperties": False}\n\n'
        "@hookimpl\n"
        "def sidemesh_policies() -> list[type[Policy]]:\n"
        "    return [Skew]\n")
    info = site / f"sidemesh_skew-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: sidemesh-skew\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[sidemesh]\nskew = sidemesh_skew.plugin\n")


def _pythonpath(site: Path) -> dict[str, str]:
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{site}{os.pathsep}{rest}" if rest else str(site)}


def _answer(text: str) -> Callable[[SeenRequest], Reply]:
    return lambda _: Reply(body=text.encode())


class Mesh:
    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.data = root / "data"
        self.cp_site, self.proxy_site = root / "cp-site", root / "proxy-site"
        _skew_plugin(self.cp_site, "2.0.0")
        _skew_plugin(self.proxy_site, "1.0.0")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.control: ProxyProcess | None = None
        self.ups = {name: stack.enter_context(Upstream(_answer(name), name=name))
                    for name in ("web-a", "web-b", "api-a", "api-b")}
        self.ports = {s: (free_port(), free_port()) for s in ("web", "api")}
        self.proxies: dict[str, ProxyProcess] = {}
        self.admin: dict[str, str] = {}

    def start_control(self) -> None:
        self.control = ProxyProcess("control", "--data", str(self.data), "--listen",
                                    self.url.removeprefix("http://"),
                                    env=_pythonpath(self.cp_site))
        self.control.__enter__()
        self.control.wait_http(self.url + "/openapi.json", status=401)
        token = (self.data / "admin.token").read_text().strip()
        self.admin = {"authorization": f"Bearer {token}"}

    def stop_control(self) -> None:
        if self.control is not None:
            self.control.__exit__(None, None, None)
            self.control = None

    def token_file(self, service: str) -> Path:
        out = subprocess.run([sys.executable, "-m", "sidemesh", "token", "--data",
                              str(self.data), "--service", service],
                             capture_output=True, text=True, timeout=30, check=True)
        path = self.root / f"{service}.token"
        path.write_text(out.stdout)
        return path

    def config(self, service: str, upstream: str,
               plugins: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        listen, admin = self.ports[service]
        return {
            "node": {"service": service},
            "admin": f"127.0.0.1:{admin}",
            "clusters": [{"name": "app", "connect_timeout": "1s",
                          "endpoints": [{"address": self.ups[upstream].address}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                           "routes": [{"name": "app", "match": {"prefix": "/"},
                                       "cluster": "app", "plugins": plugins or []}]}],
        }

    def put(self, service: str, doc: dict[str, Any]) -> httpx.Response:
        return httpx.put(f"{self.url}/v1/services/{service}/config", json=doc,
                         headers=self.admin, timeout=10)

    def deploy(self, service: str, upstream: str) -> int:
        response = self.put(service, self.config(service, upstream))
        assert response.status_code == 200, response.text
        return int(response.json()["version"])

    def start_proxy(self, proxy_id: str, service: str, token: Path,
                    bind: str | None = None) -> None:
        args = ["proxy", "--control", self.url, "--service", service, "--token-file",
                str(token), "--state-dir", str(self.root / f"state-{proxy_id}"),
                "--proxy-id", proxy_id, "--access-log", "off", "--drain-timeout", "2s"]
        if bind:
            args += ["--bind-host", bind]
        proc = self.stack.enter_context(ProxyProcess(*args, env=_pythonpath(self.proxy_site)))
        self.proxies[proxy_id] = proc
        proc.wait_http(self.admin_url(proxy_id) + "/ready")

    def host(self, proxy_id: str) -> str:
        return "127.0.0.2" if proxy_id == "web-2" else "127.0.0.1"

    def service(self, proxy_id: str) -> str:
        return proxy_id.split("-")[0]

    def admin_url(self, proxy_id: str) -> str:
        return f"http://{self.host(proxy_id)}:{self.ports[self.service(proxy_id)][1]}"

    def data_url(self, proxy_id: str) -> str:
        return f"http://{self.host(proxy_id)}:{self.ports[self.service(proxy_id)][0]}/x"

    def proxy_states(self) -> dict[str, dict[str, Any]]:
        answer = httpx.get(f"{self.url}/v1/proxies", headers=self.admin, timeout=5)
        return {p["id"]: p for p in answer.json()["proxies"]}

    def acked(self, expected: dict[str, int]) -> bool:
        try:
            states = self.proxy_states()
        except httpx.HTTPError:
            return False
        return all(states.get(i, {}).get("state") == "ACK"
                   and states[i]["applied_version"] == v for i, v in expected.items())

    def history(self, service: str) -> list[int]:
        answer = httpx.get(f"{self.url}/v1/services/{service}/history", headers=self.admin,
                           timeout=5)
        return [v["version"] for v in answer.json()["versions"]]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with contextlib.ExitStack() as stack:
        m = Mesh(tmp_path_factory.mktemp("mesh"), stack)
        stack.callback(m.stop_control)
        m.start_control()
        m.deploy("web", "web-a")
        m.deploy("api", "api-a")
        web_token, api_token = m.token_file("web"), m.token_file("api")
        m.start_proxy("web-1", "web", web_token)
        m.start_proxy("web-2", "web", web_token, bind="127.0.0.2")
        m.start_proxy("api-1", "api", api_token)
        yield m


def test_a_put_reaches_every_sidecar_and_is_acked(mesh: Mesh) -> None:
    web, api = mesh.deploy("web", "web-b"), mesh.deploy("api", "api-b")
    started = time.monotonic()
    assert wait_for(lambda: mesh.acked({"web-1": web, "web-2": web, "api-1": api}),
                    timeout=10, interval=0.01)
    elapsed = time.monotonic() - started
    print(f"PUT -> ACK from all three sidecars: {elapsed * 1000:.0f} ms")
    # Pushed, not polled: a sidecar that waited out its long poll would take 25 s. The
    # margin is for four processes and their fsyncs on a loaded machine.
    assert elapsed < 5.0
    for proxy_id in ("web-1", "web-2", "api-1"):
        service = mesh.service(proxy_id)
        assert httpx.get(mesh.data_url(proxy_id), timeout=5).text == f"{service}-b"
        dump = httpx.get(mesh.admin_url(proxy_id) + "/config_dump", timeout=5).json()
        assert dump["source"] == f"control:{mesh.url}"
        assert dump["version"] == str(web if service == "web" else api)
    states = mesh.proxy_states()
    assert {p["service"] for p in states.values()} == {"web", "api"}
    assert {"name": "skew", "version": "1.0.0", "distribution": "sidemesh-skew"} in \
        states["web-1"]["plugins"]


def test_an_invalid_put_changes_nothing_anywhere(mesh: Mesh) -> None:
    version = mesh.deploy("web", "web-a")
    assert wait_for(lambda: mesh.acked({i: version for i in WEB_IDS}))
    bad = mesh.config("web", "web-b")
    bad["listeners"][0]["routes"][0]["cluster"] = "missing"
    answer = mesh.put("web", bad)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["path"] == "listeners[0].routes[0].cluster"
    time.sleep(0.5)  # give a (wrongly) notified sidecar time to act
    assert mesh.history("web")[0] == version
    assert mesh.acked({i: version for i in WEB_IDS})
    for proxy_id in WEB_IDS:
        dump = httpx.get(mesh.admin_url(proxy_id) + "/config_dump", timeout=5).json()
        assert dump["version"] == str(version)
        assert httpx.get(mesh.data_url(proxy_id), timeout=5).text == "web-a"


def test_a_plugin_version_the_sidecars_lack_is_nacked_once_and_the_old_config_stays(
    mesh: Mesh,
) -> None:
    good = mesh.deploy("web", "web-a")
    assert wait_for(lambda: mesh.acked({i: good for i in WEB_IDS}))
    # The control plane has sidemesh-skew 2.0.0, so it accepts ">=2"; the sidecars
    # have 1.0.0 and must refuse it.
    schema = httpx.get(f"{mesh.url}/v1/schemas/skew", headers=mesh.admin, timeout=5).json()
    assert schema["version"] == "2.0.0"
    answer = mesh.put("web", mesh.config("web", "web-b",
                                         plugins=[{"name": "skew", "version": ">=2"}]))
    assert answer.status_code == 200, answer.text
    skewed = answer.json()["version"]

    def nacked() -> bool:
        states = mesh.proxy_states()
        return all(states[i]["state"] == "NACK" and states[i]["version"] == skewed
                   for i in WEB_IDS)

    assert wait_for(nacked)
    for proxy_id, state in mesh.proxy_states().items():
        if proxy_id in WEB_IDS:
            assert state["applied_version"] == good
            assert "skew" in state["error"] and ">=2" in state["error"]
        dump = httpx.get(mesh.admin_url(proxy_id) + "/config_dump", timeout=5).json()
        if proxy_id in WEB_IDS:
            assert dump["version"] == str(good)
            assert httpx.get(mesh.data_url(proxy_id), timeout=5).text == "web-a"

    fixed = mesh.deploy("web", "web-b")
    assert wait_for(lambda: mesh.acked({i: fixed for i in WEB_IDS}))
    for proxy_id in WEB_IDS:
        output = mesh.proxies[proxy_id].output
        assert output.count(f"config {skewed} of web rejected (NACK)") == 1, output


def test_rollback_reaches_the_sidecars(mesh: Mesh) -> None:
    first = mesh.deploy("web", "web-a")
    second = mesh.deploy("web", "web-b")
    assert wait_for(lambda: mesh.acked({i: second for i in WEB_IDS}))
    answer = httpx.post(f"{mesh.url}/v1/services/web/rollback", json={"version": first},
                        headers=mesh.admin, timeout=5)
    assert answer.status_code == 200
    rolled = answer.json()["version"]
    assert rolled == second + 1
    assert wait_for(lambda: mesh.acked({i: rolled for i in WEB_IDS}))
    for proxy_id in WEB_IDS:
        assert httpx.get(mesh.data_url(proxy_id), timeout=5).text == "web-a"


def test_killing_the_control_plane_under_traffic_fails_no_request(mesh: Mesh) -> None:
    web, api = mesh.deploy("web", "web-a"), mesh.deploy("api", "api-a")
    assert wait_for(lambda: mesh.acked({"web-1": web, "web-2": web, "api-1": api}))
    history = {s: mesh.history(s) for s in ("web", "api")}
    results: dict[str, int] = {"ok": 0, "failed": 0}
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                for proxy_id in ("web-1", "web-2", "api-1"):
                    try:
                        response = client.get(mesh.data_url(proxy_id))
                        good = response.status_code == 200
                    except httpx.HTTPError as exc:
                        good = False
                        failures.append(f"{proxy_id}: {exc!r}")
                    results["ok" if good else "failed"] += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        assert mesh.control is not None
        mesh.control.signal(signal.SIGKILL)
        assert mesh.control.proc is not None
        mesh.control.proc.wait(10)
        mesh.stop_control()
        served_before = results["ok"]
        time.sleep(1.5)
        assert results["ok"] > served_before  # still serving with the control plane gone

        mesh.start_control()
        assert {s: mesh.history(s) for s in ("web", "api")} == history
        web, api = mesh.deploy("web", "web-b"), mesh.deploy("api", "api-b")
        assert wait_for(lambda: mesh.acked({"web-1": web, "web-2": web, "api-1": api}),
                        timeout=30)
        assert wait_for(lambda: httpx.get(mesh.data_url("web-1"), timeout=5).text == "web-b")
    finally:
        stop.set()
        worker.join(15)
    assert results["failed"] == 0, failures[:5]
    assert results["ok"] > 0
    print(f"requests during the control-plane outage test: {results['ok']} ok, 0 failed")
