"""A sidecar given several control-plane replicas (``--control URL1,URL2``) uses one at
a time and moves to the next when the one in use stops answering: no request through it
fails, and configs put on the next replica reach it. The URL list is checked up front."""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidemesh import ControlPlane
from sidemesh.config.build import control_urls
from sidemesh.control.auth import token_id
from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, validate_config, wait_for
from sidemesh.testing.control import ControlServer
from sidemesh.tools.cli import main as cli


def _config(upstream: str, listen: int, admin: int) -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "in", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }


class Traffic:
    """A steady stream of requests through the sidecar, in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bodies: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    answer = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    if answer.status_code == 200:
                        self.bodies.append(answer.text)
                    else:
                        self.failures.append(f"{answer.status_code} {answer.text[:100]}")
                self._stop.wait(0.005)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the traffic thread did not stop"


def _proxy(cp: ControlServer, proxy_id: str) -> dict[str, Any] | None:
    listed = httpx.get(f"{cp.url}/v1/proxies", headers=cp.admin, timeout=5).json()["proxies"]
    return next((p for p in listed if p["id"] == proxy_id), None)


def test_a_dead_replica_fails_no_request_and_the_next_one_takes_over(tmp_path: Path) -> None:
    listen, admin_port = free_port(), free_port()
    admin, service_url = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{listen}/"
    with ExitStack() as stack, ExitStack() as replica1:
        one = stack.enter_context(Upstream(lambda _: Reply(body=b"one")))
        two = stack.enter_context(Upstream(lambda _: Reply(body=b"two")))
        cp2 = stack.enter_context(ControlServer(tmp_path / "cp2"))
        cp1 = replica1.enter_context(ControlServer(tmp_path / "cp1"))
        # Independent stores given the same content (a shared store is tested with etcd):
        # the same config as version 1, and the sidecar's token known to both.
        for cp in (cp1, cp2):
            put = httpx.put(f"{cp.url}/v1/services/web/config", headers=cp.admin, timeout=5,
                            json=_config(one.address, listen, admin_port))
            assert put.json()["version"] == 1
        token = cp1.token("web")
        record = cp1.call(cp1.store.get_token(token_id(token)))
        assert record is not None
        cp2.call(cp2.store.add_token(record))

        sidecar = stack.enter_context(ProxyProcess(
            "proxy", "--control", f"{cp1.url},{cp2.url}", "--service", "web",
            "--proxy-id", "web-1", "--state-dir", str(tmp_path / "state"),
            "--access-log", "off", env={"SIDEMESH_TOKEN": token}))
        sidecar.wait_http(admin + "/ready")
        assert f"following {cp1.url}, {cp2.url}" in sidecar.output
        # The first replica is the one in use: it has the sidecar's ACK, the second not.
        assert wait_for(lambda: (_proxy(cp1, "web-1") or {}).get("state") == "ACK"), \
            sidecar.output
        assert _proxy(cp2, "web-1") is None

        with Traffic(service_url) as traffic:
            assert wait_for(lambda: len(traffic.bodies) >= 20), traffic.failures
            replica1.close()
            assert wait_for(
                lambda: f"control plane {cp1.url} unreachable" in sidecar.output
                and f"trying {cp2.url}" in sidecar.output, timeout=15), sidecar.output
            # The second replica is now the one in use: a config put there arrives.
            put = httpx.put(f"{cp2.url}/v1/services/web/config", headers=cp2.admin, timeout=5,
                            json=_config(two.address, listen, admin_port))
            assert put.json()["version"] == 2
            assert wait_for(lambda: httpx.get(admin + "/config_dump", timeout=5).json()[
                "version"] == "2", timeout=20), sidecar.output
            assert wait_for(lambda: traffic.bodies[-1:] == ["two"]), traffic.bodies[-5:]
            served = len(traffic.bodies)
            assert wait_for(lambda: len(traffic.bodies) >= served + 20)

        assert traffic.failures == []
        assert traffic.bodies[0] == "one" and traffic.bodies[-1] == "two"
        dump = httpx.get(admin + "/config_dump", timeout=5).json()
        assert dump["source"] == f"control:{cp2.url}"
        assert wait_for(lambda: (_proxy(cp2, "web-1") or {}).get("version") == 2)
        proxy = _proxy(cp2, "web-1")
        assert proxy is not None and proxy["state"] == "ACK"
        # What is saved for a restart names the replica it came from.
        saved = json.loads((tmp_path / "state" / "web.json").read_text())
        assert (saved["version"], saved["control"]) == (2, cp2.url)
        assert sidecar.stop() == 0


def test_a_replica_answering_5xx_is_passed_over(tmp_path: Path) -> None:
    listen, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    broken = Upstream(lambda _: Reply(status=503, body=b'{"error": "store unavailable"}'))
    with broken, Upstream() as app, ControlServer(tmp_path / "cp") as cp:
        httpx.put(f"{cp.url}/v1/services/web/config", headers=cp.admin, timeout=5,
                  json=_config(app.address, listen, admin_port))
        failing = f"http://{broken.address}"
        with ProxyProcess("proxy", "--control", f"{failing},{cp.url}", "--service", "web",
                          "--state-dir", str(tmp_path / "state"), "--access-log", "off",
                          env={"SIDEMESH_TOKEN": cp.token("web")}) as sidecar:
            sidecar.wait_http(admin + "/ready")
            assert f"control plane {failing} answered 503" in sidecar.output
            assert f"control plane {failing} unreachable (HTTP 503): trying {cp.url}" in (
                sidecar.output)
            assert httpx.get(admin + "/config_dump", timeout=5).json()["source"] == (
                f"control:{cp.url}")
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "ok"
        assert [r.path.partition("?")[0] for r in broken.requests] == ["/v1/services/web/watch"]


def test_a_refusing_replica_is_an_answer_not_a_failure(tmp_path: Path) -> None:
    # A 401 is the control plane speaking: the sidecar stays on that replica and says why,
    # rather than shopping for one that would accept the token.
    with ExitStack() as stack:
        cp1 = stack.enter_context(ControlServer(tmp_path / "cp1"))
        cp2 = stack.enter_context(ControlServer(tmp_path / "cp2"))
        sidecar = stack.enter_context(ProxyProcess(
            "proxy", "--control", f"{cp1.url},{cp2.url}", "--service", "web",
            "--state-dir", str(tmp_path / "state"), "--access-log", "off",
            env={"SIDEMESH_TOKEN": "smt.0123456789abcdef.nope"}))
        assert wait_for(lambda: sidecar.output.count(f"control plane {cp1.url} answered 401")
                        >= 2, timeout=15), sidecar.output
        assert f"{cp1.url} unreachable (" not in sidecar.output
        assert f"trying {cp2.url}" not in sidecar.output


# the list of URLs ------------------------------------------------------------------------
def test_control_urls_are_split_checked_and_kept_in_order() -> None:
    assert control_urls("http://cp-1:15010") == ("http://cp-1:15010",)
    assert control_urls(" https://cp-2:15010/, http://cp-1:15010/api ") == (
        "https://cp-2:15010", "http://cp-1:15010/api")
    assert control_urls(["http://a:1", "http://b:2"]) == ("http://a:1", "http://b:2")
    for value, message in (
        ("", "empty control-plane URL: separate URLs with one comma"),
        ("http://a:1,,http://b:2", r"empty control-plane URL \(item 2 of 3\)"),
        ("http://a:1,", r"empty control-plane URL \(item 2 of 2\)"),
        ("http://a:1,ftp://b:2", "'ftp://b:2' is not an http:// or https:// URL"),
        ("cp-1:15010", "'cp-1:15010' is not an http:// or https:// URL"),
        ("http://a:1,http://a:1/", "'http://a:1' is given twice"),
        ([], "no control-plane URL given"),
    ):
        with pytest.raises(ValueError, match=message):
            control_urls(value)


def test_the_cli_refuses_a_bad_control_list_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for value, message in (
        ("http://a:1,,http://b:2", "empty control-plane URL (item 2 of 3)"),
        ("http://a:1,ftp://b:2", "'ftp://b:2' is not an http:// or https:// URL"),
        ("http://a:1,http://a:1", "'http://a:1' is given twice"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli(["proxy", "--control", value, "--service", "web"])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"sidemesh proxy: error: --control: {message}" in err
        assert "Traceback" not in err


def test_the_config_file_takes_several_replicas_as_a_string_or_a_list() -> None:
    def errors(url: Any) -> list[str]:
        doc = {**_config("127.0.0.1:9", 15001, 15000),
               "control": {"url": url, "token_file": "web.token"}}
        return [str(e) for e in validate_config(doc)]

    assert errors("http://cp-1:15010") == []  # a single URL, as before
    assert errors("http://cp-1:15010, http://cp-2:15010") == []
    assert errors(["http://cp-1:15010", "https://cp-2:15010/"]) == []
    assert errors("http://cp-1:15010,http://cp-1:15010/") == [
        "control.url: 'http://cp-1:15010' is given twice [rule unique_url]"]
    assert errors(["http://cp-1:15010", "http://cp-1:15010"]) == [
        "control.url: 'http://cp-1:15010' is given twice [rule unique_url]"]
    assert errors("http://cp-1:15010,,http://cp-2:15010") == [
        "control.url: 'http://cp-1:15010,,http://cp-2:15010' is not an http:// or https:// "
        "URL, or several separated by single commas [rule pattern]"]
    assert errors(["http://cp-1:15010", "ftp://cp-2"]) == [
        "control.url[1]: 'ftp://cp-2' is not an http:// or https:// URL [rule pattern]"]
    assert errors([]) == ["control.url: must not be empty [rule minItems]"]


def test_the_replica_in_use_moves_round_robin_once_per_failure() -> None:
    plane = ControlPlane("http://a", lambda: "t", None, ("http://a", "http://b", "http://c"))
    assert plane.fail_over("http://a") == "http://b"
    # A second user reporting the same (old) failure does not skip a replica.
    assert plane.fail_over("http://a") == "http://b"
    assert plane.fail_over("http://b") == "http://c"
    assert plane.fail_over("http://c") == "http://a" == plane.url
    single = ControlPlane("http://a", lambda: "t")  # as plugins built it before
    assert single.urls == ("http://a",) and single.fail_over("http://a") == "http://a"
    with pytest.raises(ValueError, match="'http://z' is not one of"):
        ControlPlane("http://z", lambda: "t", None, ("http://a",))
