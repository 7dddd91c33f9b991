"""`sidemesh proxy` as a real process: readiness, admin API, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

import sidemesh.datapath as compiled
from sidemesh import __version__
from sidemesh.testing import ProxyProcess, Reply, Upstream, free_port, wait_for


def _write(path: Path, upstream: str, listen: int, admin: int, prefix: str = "/") -> None:
    doc: dict[str, Any] = {
        "node": {"service": "web"},
        "admin": f"127.0.0.1:{admin}",
        "clusters": [{"name": "app", "endpoints": [{"address": upstream, "labels": {"v": "1"}}]}],
        "listeners": [
            {
                "name": "inbound",
                "address": f"127.0.0.1:{listen}",
                "routes": [{"name": "app", "match": {"prefix": prefix}, "cluster": "app"}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc))


def test_admin_api_reload_on_sighup_and_bad_file_keeps_the_old_config(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream(lambda r: Reply(body=b"v1")) as up:
        _write(config, up.address, listen, admin)
        with ProxyProcess("proxy", "-c", str(config)) as proc:
            base = f"http://127.0.0.1:{admin}"
            proc.wait_http(base + "/ready")
            assert httpx.get(f"http://127.0.0.1:{listen}/a", timeout=5).text == "v1"

            dump = httpx.get(base + "/config_dump", timeout=5).json()
            assert dump["source"] == f"file:{config}"
            first_version = dump["version"]
            clusters = httpx.get(base + "/clusters", timeout=5).json()["clusters"]
            endpoint = clusters[0]["endpoints"][0]
            assert endpoint["address"] == up.address and endpoint["labels"] == {"v": "1"}
            assert endpoint["ejected"] is False
            metrics = httpx.get(base + "/metrics", timeout=5).text
            assert (
                'sidemesh_requests_total{cluster="app",code="200",listener="inbound",route="app"}'
                in metrics
            )
            assert "sidemesh_request_duration_seconds_bucket" in metrics
            path = "compiled" if compiled.state().active else "interpreted"
            info = f'sidemesh_build_info{{request_path="{path}",version="{__version__}"}} 1.0'
            assert info in metrics
            assert f"request path {path}" in proc.output
            assert httpx.get(base + "/plugins", timeout=5).status_code == 200

            # a valid change: only /b is routed now
            _write(config, up.address, listen, admin, prefix="/b")
            proc.signal(signal.SIGHUP)
            assert wait_for(
                lambda: (
                    httpx.get(base + "/config_dump", timeout=5).json()["version"] != first_version
                )
            )
            assert httpx.get(f"http://127.0.0.1:{listen}/a", timeout=5).status_code == 404
            second_version = httpx.get(base + "/config_dump", timeout=5).json()["version"]

            # a broken file: logged, old config kept
            config.write_text("listeners: [\n")
            proc.signal(signal.SIGHUP)
            assert wait_for(lambda: "reload of" in proc.output)
            assert httpx.get(base + "/config_dump", timeout=5).json()["version"] == second_version
            assert httpx.get(f"http://127.0.0.1:{listen}/b", timeout=5).status_code == 200
        log_lines = [json.loads(line) for line in proc.output.splitlines() if line.startswith("{")]
        access = [line for line in log_lines if "status" in line]
        assert access and access[0]["route"] == "app" and access[0]["upstream"] == up.address
        assert {"method", "path", "cluster", "attempts", "duration_ms", "response_flags"} <= set(
            access[0]
        )


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream(lambda r: Reply(body=b"slow", delay=1.0)) as up:
        _write(config, up.address, listen, admin)
        with ProxyProcess("proxy", "-c", str(config), "--drain-timeout", "5s") as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            results: list[int] = []
            worker = threading.Thread(
                target=lambda: results.append(
                    httpx.get(f"http://127.0.0.1:{listen}/", timeout=10).status_code
                )
            )
            worker.start()
            assert wait_for(lambda: len(up.requests) == 1)
            proc.signal(signal.SIGTERM)
            worker.join(10)
            assert results == [200]
            assert proc.stop() == 0


def test_sigterm_after_sigterm_still_exits_0(tmp_path: Path) -> None:
    # A supervisor may signal again while the sidecar stops: however late the next
    # SIGTERM comes (during the drain, or as the interpreter winds down), exit 0.
    listen, admin = free_port(), free_port()
    config = tmp_path / "sidemesh.yaml"
    with Upstream() as up:
        _write(config, up.address, listen, admin)
        with ProxyProcess("proxy", "-c", str(config)) as proc:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready")
            assert proc.proc is not None
            deadline = time.monotonic() + 15
            while proc.proc.poll() is None and time.monotonic() < deadline:
                proc.signal(signal.SIGTERM)
                time.sleep(0.002)
            assert proc.proc.poll() == 0, proc.output


def test_an_invalid_file_starts_nothing_and_lists_every_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "node: {service: web}\n"
        "clusters: [{name: a, endpoints: [{address: 'nope'}]}]\n"
        "listeners: [{name: l, address: '127.0.0.1:1', routes: "
        "[{name: r, match: {prefix: /}, cluster: missing}]}]\n"
    )
    with ProxyProcess("proxy", "-c", str(config)) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(20) == 1
        assert "Traceback" not in proc.output
        assert "missing" in proc.output and "nope" in proc.output
