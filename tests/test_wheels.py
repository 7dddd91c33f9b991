"""The distributions a user installs: ``./dev wheels`` (``sidemesh.tools.wheels``) builds
them, and a fresh venv given nothing of sidemesh but those files (the dependencies come
from the package index, as for any user) runs a sidecar with all five plugins: compiled
from the platform wheel, interpreted and saying so from the pure-Python one.

Building the compiled wheel takes about two minutes; .ci/run runs this module once, in
its compiled pass.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidemesh import __version__
from sidemesh.datapath import MODULES
from sidemesh.testing import ProxyProcess, Upstream, free_port

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["circuit", "mtls", "retry", "split", "tracing"]
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))
#: the checkout's choices (SIDEMESH_COMPILED=0 in CI's second pass…) stay out of the venv.
USER_ENV = {name: value for name, value in os.environ.items()
            if not name.startswith("SIDEMESH_") and name not in ("PYTHONPATH", "VIRTUAL_ENV")}
PROBE = ("import json, sidemesh.datapath as d, sidemesh.datapath.forward as f\n"
         "print(json.dumps({'reason': d.state().reason, 'forward': f.__file__}))")

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None
        and os.environ.get("SIDEMESH_EXPECT_COMPILED") != "1",
        reason="no C compiler: the platform wheel cannot be built here"),
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "sidemesh.tools.wheels", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    return out


def _run(*argv: str | Path, timeout: float = 60, **env: str) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout, env={**USER_ENV, **env}, cwd="/")
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _venv(home: Path, *wheels: Path) -> Path:
    """A fresh venv with ``wheels`` installed (by file, as the README says); its bin/."""
    _run(sys.executable, "-m", "venv", home, timeout=120)
    _run(home / "bin" / "python", "-m", "pip", "install", "-q", *wheels, timeout=600)
    return home / "bin"


def _site_packages(bin_dir: Path) -> Path:
    return Path(_run(bin_dir / "python", "-c", "import sysconfig; "
                     "print(sysconfig.get_paths()['purelib'])").strip())


@pytest.fixture
def certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(ROOT))
    issued: Path = importlib.import_module("bench.certs").issue_certificates(
        tmp_path / "certs", services=("app",))
    return issued


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


def _config(directory: Path, upstream: Upstream, certs: Path) -> tuple[Path, str, str]:
    """One sidecar with every plugin: its outbound route (tracing, retry, circuit, split,
    mTLS originated) reaches its own inbound listener (mTLS terminated, strict), which
    forwards to ``upstream``. The config file, the outbound URL and the admin URL."""
    outbound, inbound, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
    identity = "spiffe://cluster.local/ns/default/sa/app"
    tls = {"cert_file": str(certs / "app.crt"), "key_file": str(certs / "app.key"),
           "bundle_file": str(certs / "bundle.pem")}
    config = {
        "node": {"service": "app", "namespace": "default"},
        "admin": admin,
        "clusters": [
            {"name": "inbound", "endpoints": [{"address": inbound, "labels": {"v": "1"}}],
             "subsets": [{"name": "v1", "labels": {"v": "1"}}]},
            {"name": "app", "endpoints": [{"address": upstream.address}]},
        ],
        "listeners": [
            {"name": "outbound", "address": outbound, "routes": [
                {"name": "to-inbound", "match": {"prefix": "/"}, "cluster": "inbound",
                 "plugins": [
                     {"name": "tracing", "config": {"sampling": 1.0}},
                     {"name": "retry", "config": {"attempts": 2,
                                                  "retry_on": ["connect-failure"]}},
                     {"name": "circuit", "config": {"consecutive_5xx": 5}},
                     {"name": "split", "config": {"destinations": [{"subset": "v1"}]}},
                     {"name": "mtls", "config": {"expect": identity, **tls}},
                 ]},
            ]},
            {"name": "inbound", "address": inbound,
             "plugins": [{"name": "mtls", "config": {"mode": "strict", "allow": [identity],
                                                     **tls}}],
             "routes": [{"name": "app", "match": {"prefix": "/"}, "cluster": "app"}]},
        ],
    }
    path = directory / "sidemesh.json"
    path.write_text(json.dumps(config))
    return path, f"http://{outbound}", f"http://{admin}"


def _serve_once(bin_dir: Path, config: Path, url: str, admin: str,
                upstream: Upstream) -> tuple[list[dict[str, str]], str]:
    """Run the venv's sidecar, send one request through all five plugins; its log lines
    (JSON) and its /metrics."""
    sidecar = ProxyProcess("proxy", "-c", str(config))
    sidecar.args[0] = str(bin_dir / "python")
    sidecar.env = USER_ENV
    with sidecar:
        sidecar.wait_http(f"{admin}/ready")
        response = httpx.get(f"{url}/reviews/1", timeout=10)
        assert response.status_code == 200 and response.text == "ok", sidecar.output
        # The tracing plugin started a trace; the hop between the listeners was mTLS.
        assert "traceparent" in upstream.requests[-1].headers
        loaded = httpx.get(f"{admin}/plugins", timeout=5).json()
        assert sorted(p["name"] for p in loaded["plugins"]) == PLUGINS
        assert loaded["load_errors"] == []
        metrics = httpx.get(f"{admin}/metrics", timeout=5).text
    log = [json.loads(line) for line in sidecar.output.splitlines() if line.startswith("{")]
    return [entry for entry in log if "level" in entry], metrics


def test_the_platform_wheel_runs_every_plugin_compiled_and_uninstalls_cleanly(
        dist: Path, tmp_path: Path, certs: Path, upstream: Upstream) -> None:
    (core,) = dist.glob("sidemesh-*.whl")
    assert not core.name.endswith("-py3-none-any.whl"), core.name
    bin_dir = _venv(tmp_path / "venv", core, *sorted(dist.glob("sidemesh_*-*.whl")))

    version = json.loads(_run(bin_dir / "sidemesh", "version", "--client", "--json"))
    assert version["client"] == {"version": __version__, "request_path": "compiled"}
    assert {p["name"]: p["request_path"] for p in version["plugins"]} == {
        "circuit": "compiled", "mtls": "interpreted", "retry": "compiled",
        "split": "compiled", "tracing": "interpreted"}
    probe = json.loads(_run(bin_dir / "python", "-c", PROBE))
    assert probe["reason"] == f"compiled: {len(MODULES)} modules from the platform wheel"
    assert probe["forward"].startswith(str(tmp_path / "venv"))
    assert probe["forward"].endswith(EXT_SUFFIX)
    forced = json.loads(_run(bin_dir / "python", "-c", PROBE, SIDEMESH_COMPILED="0"))
    assert forced == {"reason": "interpreted: SIDEMESH_COMPILED=0",
                      "forward": probe["forward"].removesuffix(EXT_SUFFIX) + ".py"}

    log, metrics = _serve_once(bin_dir, *_config(tmp_path, upstream, certs), upstream)
    ready = [e["msg"] for e in log if " ready: " in e["msg"]]
    assert len(ready) == 1 and ready[0].endswith(
        f"request path compiled: {len(MODULES)} modules from the platform wheel"), log
    assert [e for e in log if e["level"] == "warning"] == []
    assert f'sidemesh_build_info{{request_path="compiled",version="{__version__}"}} 1.0' \
        in metrics

    # pip's record holds every compiled file: uninstalling leaves none behind.
    site = _site_packages(bin_dir)
    _run(bin_dir / "python", "-m", "pip", "uninstall", "-y", "-q", "sidemesh", "sidemesh-demo",
         *(f"sidemesh-{name}" for name in PLUGINS))
    assert not (site / "sidemesh").exists()
    assert list(site.glob("sidemesh_*")) == []
    assert list(site.glob(f"*__mypyc{EXT_SUFFIX}")) == []


def test_the_pure_wheel_runs_interpreted_and_says_so(
        dist: Path, tmp_path: Path, certs: Path, upstream: Upstream) -> None:
    (core,) = (dist / "pure").glob("sidemesh-*.whl")
    assert core.name == f"sidemesh-{__version__}-py3-none-any.whl"
    pure = {w.name.split("-")[0]: w for w in (dist / "pure").glob("sidemesh_*-*.whl")}
    assert all(w.name.endswith("-py3-none-any.whl") for w in pure.values())
    plugins = [pure.get(w.name.split("-")[0], w) for w in dist.glob("sidemesh_*-*.whl")]
    bin_dir = _venv(tmp_path / "venv", core, *sorted(plugins))

    version = json.loads(_run(bin_dir / "sidemesh", "version", "--client", "--json"))
    assert version["client"]["request_path"] == "interpreted"
    assert {p["request_path"] for p in version["plugins"]} == {"interpreted"}
    assert json.loads(_run(bin_dir / "python", "-c", PROBE))["forward"].endswith(".py")

    log, metrics = _serve_once(bin_dir, *_config(tmp_path, upstream, certs), upstream)
    (warning,) = [e["msg"] for e in log if e["level"] == "warning"]
    assert warning.startswith("request path interpreted: installed from the pure-Python "
                              "wheel"), warning
    assert "about half the requests per second" in warning
    assert "install sidemesh's compiled wheel for" in warning
    assert f'sidemesh_build_info{{request_path="interpreted",version="{__version__}"}} 1.0' \
        in metrics
