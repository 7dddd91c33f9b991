"""The status port of a real sidecar (``--status-port``): readiness for kubelet and
metrics for Prometheus on an address they can reach, and nothing that shows the config."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, run_cli, wait_for
from sidemesh.testing.control import ControlServer


def _config(upstream: str, listen: int, admin: int) -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream}]}],
        "listeners": [{"name": "inbound", "address": f"127.0.0.1:{listen}",
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "app"}]}],
    }


def _families(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}


def test_status_port_serves_readiness_and_metrics_and_nothing_else(tmp_path: Path) -> None:
    listen, admin, status = free_port(), free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream(lambda _: Reply(body=b"hello")) as up:
        config.write_text(yaml.safe_dump(_config(up.address, listen, admin)))
        with ProxyProcess("proxy", "-c", str(config), "--status-port", str(status)) as proc:
            base = f"http://127.0.0.1:{status}"
            proc.wait_http(base + "/healthz/ready")
            # Bound on every address by default: kubelet probes the pod's IP.
            assert f"status port on 0.0.0.0:{status}" in proc.output
            ready = httpx.get(base + "/healthz/ready", timeout=5)
            assert (ready.status_code, ready.text) == (200, "ready\n")
            assert httpx.get(f"http://127.0.0.1:{listen}/", timeout=5).text == "hello"

            scraped = httpx.get(base + "/stats/prometheus", timeout=5)
            assert scraped.headers["content-type"].startswith("text/plain; version=")
            assert ('sidemesh_requests_total{cluster="app",code="200",listener="inbound",'
                    'route="app"} 1.0') in scraped.text
            admin_metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
            assert _families(scraped.text) == _families(admin_metrics)

            for path in ("/config_dump", "/clusters", "/plugins", "/ready", "/metrics", "/"):
                assert httpx.get(base + path, timeout=5).status_code == 404, path
            assert httpx.post(base + "/healthz/ready", timeout=5).status_code == 405
            # The admin API is where it was, and still shows the config.
            dump = httpx.get(f"http://127.0.0.1:{admin}/config_dump", timeout=5).json()
            assert dump["config"]["clusters"][0]["endpoints"][0]["address"] == up.address
            assert proc.stop() == 0


def test_without_the_option_there_is_no_status_port(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream() as up:
        config.write_text(yaml.safe_dump(_config(up.address, listen, admin)))
        with ProxyProcess("proxy", "-c", str(config)) as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            assert "status port" not in proc.output
            assert proc.stop() == 0


def test_not_ready_before_a_config_and_while_draining(tmp_path: Path) -> None:
    listen, admin, status = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{status}"
    with ControlServer(tmp_path / "cp") as cp, \
            Upstream(lambda _: Reply(body=b"slow", delay=1.5)) as up:
        token = cp.token("web")
        with ProxyProcess("proxy", "--control", cp.url, "--service", "web", "--state-dir",
                          str(tmp_path / "state"), "--status-port", str(status),
                          "--status-address", "127.0.0.1", "--drain-timeout", "5s",
                          env={"SIDEMESH_TOKEN": token}) as proc:
            # Up before any config: kubelet gets an answer, and no reason (a listener's
            # name, the control plane's address) is given to whoever asks.
            proc.wait_http(base + "/healthz/ready", status=503)
            assert httpx.get(base + "/healthz/ready", timeout=5).text == "not ready\n"

            put = httpx.put(f"{cp.url}/v1/services/web/config", headers=cp.admin, timeout=5,
                            json=_config(up.address, listen, admin))
            assert put.status_code == 200, put.text
            proc.wait_http(base + "/healthz/ready")

            results: list[int] = []
            worker = threading.Thread(target=lambda: results.append(
                httpx.get(f"http://127.0.0.1:{listen}/", timeout=10).status_code))
            worker.start()
            assert wait_for(lambda: len(up.requests) == 1)
            proc.signal(signal.SIGTERM)
            # Draining: kubelet takes the pod out of its Services' endpoints.
            assert wait_for(lambda: httpx.get(base + "/healthz/ready", timeout=2)
                            .status_code == 503, timeout=5)
            worker.join(10)
            assert results == [200]
            assert proc.stop() == 0


def test_a_status_port_in_use_is_an_error_without_a_traceback(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with socket.socket() as taken, Upstream() as up:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(yaml.safe_dump(_config(up.address, listen, admin)))
        with ProxyProcess("proxy", "-c", str(config), "--status-port", str(port),
                          "--status-address", "127.0.0.1") as proc:
            assert proc.proc is not None
            assert proc.proc.wait(20) == 1
            assert f"status port cannot listen on 127.0.0.1:{port}" in proc.output
            assert "Traceback" not in proc.output


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_status_port_out_of_range_is_refused(port: str, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("proxy", "-c", str(tmp_path / "x.yaml"), "--status-port", port)
    assert exit_.value.code == 2
    assert "is not a port (1-65535)" in capsys.readouterr().err
