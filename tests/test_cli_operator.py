"""The operator's commands (issue 18) against a real control plane and a real sidecar
process: config push/get/history/rollback, proxy-status, proxy-config, explain --admin,
version, completion; their errors as one line; and the mypyc build's progress lines."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidemesh import __version__
from sidemesh.config.registry import PluginRegistry
from sidemesh.control.store import ProxyStatus
from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for
from sidemesh.testing.control import ControlServer
from sidemesh.tools.build_compiled import BuildProgress, compile_with_progress
from sidemesh.tools.cli import main


@dataclass
class Mesh:
    cp: ControlServer
    root: Path
    apps: dict[str, Upstream]
    admin_port: int
    listen_port: int
    admin: str = ""

    def config(self, app: str = "a", route: str = "app") -> dict[str, Any]:
        return {
            "node": {"service": "web"},
            "admin": f"127.0.0.1:{self.admin_port}",
            "clusters": [{"name": "app", "connect_timeout": "1s", "endpoints": [
                {"address": self.apps[app].address, "labels": {"version": app}}]}],
            "listeners": [{"name": "inbound", "address": f"127.0.0.1:{self.listen_port}",
                           "routes": [{"name": route, "match": {"prefix": "/"},
                                       "cluster": "app", "timeout": "3s"}]}],
        }

    def file(self, doc: dict[str, Any], name: str = "web.yaml") -> str:
        path = self.root / name
        path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
        return str(path)

    def answer(self) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{self.listen_port}/x", timeout=5).text
        except httpx.HTTPError:
            return ""

    def history(self) -> list[int]:
        answer = httpx.get(f"{self.cp.url}/v1/services/web/history", headers=self.cp.admin,
                           timeout=5).json()
        return [v["version"] for v in answer["versions"]]


def sidemesh(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlServer]:
    """A control plane the commands find through the environment, as an operator's
    shell would have it."""
    with ControlServer(tmp_path / "cp") as server:
        token = tmp_path / "admin.token"
        token.write_text(server.admin_token + "\n")
        monkeypatch.setenv("SIDEMESH_CONTROL", server.url)
        monkeypatch.setenv("SIDEMESH_ADMIN_TOKEN_FILE", str(token))
        yield server


@pytest.fixture
def mesh(cp: ControlServer, tmp_path: Path) -> Iterator[Mesh]:
    """Version 1 of service web on the control plane, and a sidecar (web-1) serving it."""
    with contextlib.ExitStack() as stack:
        apps = {name: stack.enter_context(Upstream(lambda _, n=name: Reply(body=n.encode())))
                for name in ("a", "b")}
        m = Mesh(cp, tmp_path, apps, free_port(), free_port())
        put = httpx.put(f"{cp.url}/v1/services/web/config", json=m.config(),
                        headers=cp.admin, timeout=10)
        assert put.status_code == 200, put.text
        token = tmp_path / "web.token"
        token.write_text(cp.token("web"))
        sidecar = stack.enter_context(ProxyProcess(
            "proxy", "--control", cp.url, "--service", "web", "--token-file", str(token),
            "--proxy-id", "web-1", "--state-dir", str(tmp_path / "state"),
            "--access-log", "off", "--drain-timeout", "1s"))
        m.admin = f"http://127.0.0.1:{m.admin_port}"
        sidecar.wait_http(m.admin + "/ready")
        yield m


def test_a_pushed_config_reaches_the_sidecar_and_a_rollback_brings_the_first_back(
        mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    assert mesh.answer() == "a"
    code, out, _ = sidemesh(capsys, "config", "push", "web", "-f", mesh.file(mesh.config("b")))
    assert code == 0 and out.startswith("web: stored version 2 (digest ")
    assert wait_for(lambda: mesh.answer() == "b", timeout=10)
    code, out, _ = sidemesh(capsys, "config", "push", "web", "-f", mesh.file(mesh.config("b")))
    assert (code, out.split(" (")[0]) == (0, "web: unchanged, still version 2")

    code, out, _ = sidemesh(capsys, "config", "rollback", "web", "--to", "1")
    assert code == 0 and out.startswith("web: version 1 stored again as version 3")
    assert wait_for(lambda: mesh.answer() == "a", timeout=10)

    code, out, _ = sidemesh(capsys, "config", "history", "web")
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "DIGEST", "CREATED", "AUTHOR", "ROLLBACK", "OF"]
    assert [(cells[0], cells[3], cells[4]) for cells in map(str.split, lines[1:])] == [
        ("3", "admin", "1"), ("2", "admin", "-"), ("1", "admin", "-")]
    assert lines[1].split()[1] == lines[3].split()[1]  # the rollback is version 1's content
    code, out, _ = sidemesh(capsys, "config", "history", "web", "--json")
    assert [v["version"] for v in json.loads(out)] == [3, 2, 1]

    # get: YAML that can be pushed back as it is, or the API's answer.
    code, out, _ = sidemesh(capsys, "config", "get", "web")
    assert out.startswith("# web version 3, rollback of 1, digest ")
    assert yaml.safe_load(out) == mesh.config("a")
    code, out, _ = sidemesh(capsys, "config", "get", "web", "--version", "2", "-o", "json")
    answer = json.loads(out)
    assert (answer["version"], answer["config"]) == (2, mesh.config("b"))


def test_an_invalid_push_lists_every_error_and_stores_nothing(
        mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    bad = mesh.config()
    bad["listeners"][0]["routes"][0]["cluster"] = "missing"
    bad["listeners"][0]["routes"][0]["timeout"] = "soon"
    code, _, err = sidemesh(capsys, "config", "push", "web", "-f", mesh.file(bad, "bad.json"))
    assert code == 1
    first, *errors = err.splitlines()
    assert first == (f"sidemesh config push: control plane {mesh.cp.url} answered 422: "
                     "invalid config (2 errors)")
    assert sorted(e.split(":")[0].strip() for e in errors) == [
        "listeners[0].routes[0].cluster", "listeners[0].routes[0].timeout"]
    assert any("[rule cluster_ref]" in e for e in errors)
    code, _, err = sidemesh(capsys, "config", "push", "web", "-f", mesh.file(bad), "--dry-run")
    assert code == 1 and "invalid config (2 errors)" in err
    code, out, _ = sidemesh(capsys, "config", "push", "web", "-f", mesh.file(mesh.config("b")),
                            "--dry-run")
    assert code == 0 and "nothing stored" in out
    assert mesh.history() == [1]
    assert mesh.answer() == "a"


def test_proxy_status_shows_a_nack_with_its_reason_and_a_stale_proxy(
        mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = sidemesh(capsys, "proxy-status")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "SERVICE", "STATE", "VERSION", "APPLIED",
                                           "LATEST", "SYNCED", "LAST", "SEEN"]
    assert out.splitlines()[1].split()[:7] == ["web-1", "web", "ACK", "1", "1", "1", "SYNCED"]

    # Version 2 listens on a port taken: the sidecar NACKs it and keeps serving 1.
    taken = mesh.config("b")
    taken["listeners"][0]["address"] = mesh.apps["a"].address
    sidemesh(capsys, "config", "push", "web", "-f", mesh.file(taken))
    # A proxy that reported ten minutes ago and was not seen since.
    mesh.cp.call(mesh.cp.store.record_status(
        ProxyStatus("web-old", "web", "ACK", 1, 1, None, [], time.time() - 600)))

    def nacked() -> bool:
        proxies = httpx.get(f"{mesh.cp.url}/v1/proxies", headers=mesh.cp.admin, timeout=5)
        return any(p["id"] == "web-1" and p["state"] == "NACK"
                   for p in proxies.json()["proxies"])

    assert wait_for(nacked, timeout=10)
    code, out, _ = sidemesh(capsys, "proxy-status", "web")
    assert code == 1  # a rollout check: web-1 does not serve the latest version
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["web-1"][:8] == ["web-1", "web", "NACK", "2", "1", "2", "NOT", "SYNCED"]
    assert rows["web-old"][-1] == "STALE" and rows["web-old"][-2].startswith("10m")
    assert "web-1: NACK of version 2, serving version 1: " in out
    assert "address already in use" in out.split("web-1: NACK")[1]
    assert mesh.answer() == "a"

    code, out, _ = sidemesh(capsys, "proxy-status", "--json")
    found = {p["id"]: p for p in json.loads(out)["proxies"]}
    assert (found["web-1"]["synced"], found["web-1"]["stale"]) == (False, False)
    assert (found["web-old"]["latest_version"], found["web-old"]["stale"]) == (2, True)
    code, out, _ = sidemesh(capsys, "proxy-status", "api")
    assert (code, out) == (0, f"no proxies of service api have reported to {mesh.cp.url}\n")


def test_proxy_config_shows_what_the_sidecar_runs(
        mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    admin = ["--admin", f"127.0.0.1:{mesh.admin_port}"]
    code, out, _ = sidemesh(capsys, "proxy-config", "clusters", *admin)
    assert code == 0
    assert out.splitlines()[1].split() == ["app", "round_robin", "1", "1", "0", "-", "0", "0",
                                           "0"]
    code, out, _ = sidemesh(capsys, "proxy-config", "endpoints", *admin)
    assert out.splitlines()[1].split()[:4] == [mesh.apps["a"].address, "app", "version=a",
                                               "HEALTHY"]
    code, out, _ = sidemesh(capsys, "proxy-config", "listeners", *admin)
    assert out.splitlines()[1].split() == ["inbound", f"127.0.0.1:{mesh.listen_port}", "1", "-"]
    code, out, _ = sidemesh(capsys, "proxy-config", "routes", *admin)
    assert out.splitlines()[1].split() == ["inbound", "app", "*", "prefix", "/", "app", "3s",
                                           "-"]
    code, out, _ = sidemesh(capsys, "proxy-config", "clusters", *admin, "--json")
    assert json.loads(out) == httpx.get(mesh.admin + "/clusters", timeout=5).json()

    code, out, _ = sidemesh(capsys, "proxy-config", "config", *admin)
    assert out.startswith(f"# config 1 from control:{mesh.cp.url}, applied by the sidecar at")
    assert yaml.safe_load(out) == mesh.config()
    code, out, _ = sidemesh(capsys, "proxy-config", "config", *admin, "--json")
    dump = json.loads(out)
    assert (dump["version"], dump["config"]) == ("1", mesh.config())


def test_explain_reads_a_live_sidecars_config(
        mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = sidemesh(capsys, "explain", "--admin", mesh.admin, "GET", "/x")
    assert code == 0
    assert "-> route app: matched" in out and mesh.apps["a"].address in out
    assert err == (f"sidemesh explain: config 1 from control:{mesh.cp.url}, applied by the "
                   f"sidecar at {mesh.admin}\n")
    sidemesh(capsys, "config", "push", "web", "-f", mesh.file(mesh.config("b", route="v2")))
    assert wait_for(lambda: mesh.answer() == "b", timeout=10)
    code, out, _ = sidemesh(capsys, "explain", "--admin", mesh.admin, "GET", "/x", "--json")
    [listener] = json.loads(out)["listeners"]
    assert listener["match"]["route"] == "v2"
    assert [e["address"] for e in listener["match"]["endpoints"]] == [mesh.apps["b"].address]


def test_version_names_the_client_its_plugins_and_the_control_plane(
        cp: ControlServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = sidemesh(capsys, "version")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"client version: {__version__} (request path ")
    assert lines[1] == f"control plane version: {__version__} at {cp.url}, store sqlite"
    rows = [line.split() for line in lines]
    assert ["NAME", "DISTRIBUTION", "VERSION", "REQUEST", "PATH"] in rows
    for plugin in PluginRegistry.load().all():
        assert [plugin.name, plugin.distribution, plugin.version, "compiled"] in rows \
            or [plugin.name, plugin.distribution, plugin.version, "interpreted"] in rows
    code, out, _ = sidemesh(capsys, "version", "--short")
    assert out == f"client version: {__version__}\ncontrol plane version: {__version__}\n"
    code, out, _ = sidemesh(capsys, "version", "--json")
    answer = json.loads(out)
    assert answer["control_plane"] == {"url": cp.url, "version": __version__,
                                       "store": "sqlite", "status": "ok"}
    assert answer["client"]["version"] == __version__

    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = sidemesh(capsys, "version", "--short", "--control", nowhere)
    assert (code, out) == (1, f"client version: {__version__}\n")
    assert f"control plane unreachable ({nowhere}: " in err
    code, out, err = sidemesh(capsys, "version", "--short", "--client", "--control", nowhere)
    assert (code, out, err) == (0, f"client version: {__version__}\n", "")


def test_failures_are_one_line_that_says_what_to_do(
        cp: ControlServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    # A real process: whatever fails, no traceback reaches the user.
    done = subprocess.run([sys.executable, "-m", "sidemesh", "config", "history", "web",
                           "--control", nowhere], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"sidemesh config history: control plane unreachable "
                                  f"({nowhere}: ")
    # The next replica answers when the first does not.
    code, out, _ = sidemesh(capsys, "proxy-status", "--control", f"{nowhere},{cp.url}")
    assert (code, out) == (0, f"no proxies have reported to {cp.url}\n")

    code, _, err = sidemesh(capsys, "config", "get", "web")
    assert err.startswith(f"sidemesh config get: control plane {cp.url} answered 404: "
                          "service 'web' has no")
    monkeypatch.delenv("SIDEMESH_ADMIN_TOKEN_FILE")
    monkeypatch.setenv("SIDEMESH_ADMIN_TOKEN", "not-the-token")
    code, _, err = sidemesh(capsys, "proxy-status")
    assert code == 1 and f"control plane {cp.url} answered 401: " in err
    monkeypatch.delenv("SIDEMESH_ADMIN_TOKEN")
    monkeypatch.chdir(tmp_path)
    code, _, err = sidemesh(capsys, "config", "history", "web")
    assert code == 1 and "no admin token: sidemesh-data/admin.token does not exist; " \
        "give --admin-token-file FILE" in err
    token = str(tmp_path / "admin.token")
    doc = tmp_path / "web.yaml"
    doc.write_text("{}\n")
    for args, message in (
        (["--control", "cp:15010"], "--control: 'cp:15010' is not an http:// or https:// URL"),
        (["--control-ca", str(tmp_path / "none.pem")], "none.pem: No such file or directory"),
        (["-f", str(tmp_path / "none.yaml")], "none.yaml: No such file or directory"),
    ):
        extra = [] if args[0] == "-f" else ["-f", str(doc)]
        code, _, err = sidemesh(capsys, "config", "push", "web", "--admin-token-file", token,
                                *extra, *args)
        assert code == 1 and message in err, err
    code, _, err = sidemesh(capsys, "proxy-config", "clusters", "--admin", nowhere)
    assert err == f"sidemesh proxy-config clusters: sidecar admin API {nowhere} unreachable: " \
        "[Errno 111] Connection refused\n"
    code, _, err = sidemesh(capsys, "explain", "--admin", nowhere, "GET", "/")
    assert code == 1 and err.startswith(f"sidemesh explain: sidecar admin API {nowhere} ")


def test_an_https_control_plane_is_trusted_only_through_control_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, ca = tmp_path / "cp", tmp_path / "ca.pem"
    ca.write_text(subprocess.run(
        [sys.executable, "-m", "sidemesh", "control", "--data", str(data), "--print-ca"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with ProxyProcess("control", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                      "--tls") as control:
        common = ["--control", url, "--admin-token-file", str(data / "admin.token")]
        assert wait_for(lambda: main(["proxy-status", *common, "--control-ca", str(ca)]) == 0,
                        timeout=20), control.output
        capsys.readouterr()
        code, out, _ = sidemesh(capsys, "proxy-status", *common, "--control-ca", str(ca))
        assert (code, out) == (0, f"no proxies have reported to {url}\n")
        code, _, err = sidemesh(capsys, "proxy-status", *common)
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err
        assert "give the control plane's CA with --control-ca FILE" in err


def test_completion_scripts_know_every_command(tmp_path: Path) -> None:
    def script(shell: str) -> str:
        return subprocess.run([sys.executable, "-m", "sidemesh", "completion", shell],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    bash = tmp_path / "sidemesh.bash"
    bash.write_text(script("bash"))
    subprocess.run(["bash", "-n", str(bash)], check=True, timeout=30)

    def complete(*words: str) -> list[str]:
        program = (f"source {bash}; COMP_WORDS=(sidemesh {' '.join(words)}); "
                   f"COMP_CWORD={len(words)}; _shtab_sidemesh; "
                   "printf '%s\\n' \"${COMPREPLY[@]}\"")
        done = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                              timeout=30, check=True)
        return done.stdout.split()

    assert set(complete("proxy-")) == {"proxy-status", "proxy-config"}
    assert complete("config", "''") == ["push", "get", "history", "rollback"]
    assert "--admin-token-file" in complete("config", "push", "web", "--a")
    assert set(complete("proxy-config", "''")) == {"clusters", "endpoints", "listeners",
                                                  "routes", "config"}
    for shell, first in (("zsh", "#compdef sidemesh"), ("fish", "# AUTOMATICALLY GENERATED")):
        text = script(shell)
        assert text.startswith(first)
        assert all(word in text for word in ("proxy-status", "proxy-config", "rollback"))


def test_the_build_shows_each_step_as_mypyc_reaches_it(tmp_path: Path) -> None:
    fake_mypyc = ("import time\n"
                  "for line in ('running build_ext', \"building 'ab12__mypyc' extension\",\n"
                  "             'gcc -c build/__native_ab12.c',\n"
                  "             \"building 'sidemesh.datapath.codec' extension\",\n"
                  "             \"building 'sidemesh.datapath.routing' extension\"):\n"
                  "    print(line, flush=True)\n")
    log = io.StringIO()
    with BuildProgress(2, stream=log) as progress:
        compile_with_progress([sys.executable, "-c", fake_mypyc], tmp_path, progress)
    assert log.getvalue().splitlines() == [
        "[1/4] type-checking and generating C",
        "[2/4] compiling the C code of all modules",
        "[3/4] building sidemesh.datapath.codec",
        "[4/4] building sidemesh.datapath.routing",
    ]


def test_a_failed_or_hung_build_says_why(tmp_path: Path) -> None:
    failing = "import sys\nprint('a.py:3: error: Incompatible types')\nsys.exit(1)\n"
    with pytest.raises(RuntimeError, match=r"a\.py:3: error: Incompatible types"), \
            BuildProgress(1, stream=io.StringIO()) as progress:
        compile_with_progress([sys.executable, "-c", failing], tmp_path, progress)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired), \
            BuildProgress(1, stream=io.StringIO()) as progress:
        compile_with_progress([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path,
                              progress, timeout=0.5)
    assert time.monotonic() - started < 10
