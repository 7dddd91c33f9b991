"""What a sidecar process imports: a feature's heavy dependencies load only where a config
uses it (issue 19, each proxy process's peak RSS). Every installed plugin is loaded, as
in production; the config names none of them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from sidemesh.testing import free_port

#: what a plain config's proxy does not need: mTLS's cryptography, the control-plane
#: client's httpx (and the rich and click of httpx's command line), the tracing
#: exporters' OpenTelemetry SDK and protobuf, RE2 (regex routes only), h2 (until the
#: first HTTP/2 client or pool), websockets (the admin API has no WebSocket endpoint).
NOT_FOR_A_PLAIN_CONFIG = (
    "cryptography", "httpx", "rich", "opentelemetry.sdk", "google.protobuf", "re2", "h2",
    "websockets",
)
#: what no sidecar process needs: its admin API and status port are served by the data
#: path's own HTTP/1.1 code, not by uvicorn and Starlette (the control plane's).
NOT_FOR_A_SIDECAR = ("starlette", "uvicorn", "anyio", "click", "h11")


def _plain(path: Path, listen: str, admin: str) -> Path:
    path.write_text(yaml.safe_dump({
        "node": {"service": "web"},
        "admin": admin,
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "inbound", "address": listen,
                       "routes": [{"name": "all", "match": {"prefix": "/"}, "cluster": "app"}]}],
    }))
    return path


def _loaded(code: str, *args: str) -> list[str]:
    """The modules of ``NOT_FOR_A_PLAIN_CONFIG + NOT_FOR_A_SIDECAR`` that ``code``, run in a
    fresh interpreter, had imported when it printed ``sys.modules`` as JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60, check=True)
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return sorted(m for m in (*NOT_FOR_A_PLAIN_CONFIG, *NOT_FOR_A_SIDECAR) if m in modules)


def test_sidemesh_proxy_with_a_plain_config_imports_no_tls_client_or_exporter(
        tmp_path: Path) -> None:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = _plain(tmp_path / "sidemesh.yaml", listen, admin)
    # Serving (listener and admin API up), then the module list, then SIGTERM's drain.
    loaded = _loaded("""
        import json, os, signal, socket, sys, threading, time

        from sidemesh.tools.cli import main

        def report():
            for address in sys.argv[2:]:
                host, port = address.rsplit(":", 1)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        socket.create_connection((host, int(port)), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
            print(json.dumps(sorted(sys.modules)), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=report, daemon=True).start()
        sys.exit(main(["proxy", "-c", sys.argv[1], "--access-log", "off"]))
    """, str(config), listen, admin)
    assert loaded == []


def test_a_worker_imports_neither_the_admin_api_nor_what_the_config_does_not_use(
        tmp_path: Path) -> None:
    config = _plain(tmp_path / "sidemesh.yaml", "127.0.0.1:0", "127.0.0.1:0")
    # What a worker does with the parent's `apply`: rebuild the config, serve it.
    loaded = _loaded("""
        import asyncio, json, sys

        import yaml

        from sidemesh.config.registry import PluginRegistry
        from sidemesh.config.validate import build
        from sidemesh.process.worker import Worker
        from sidemesh.process.workers import encode_config
        from sidemesh.process.sidecar import new_sidecar

        async def serve():
            registry = PluginRegistry.load()
            sidecar = new_sidecar(registry)
            sidecar.reuse_port = True
            config = build(yaml.safe_load(open(sys.argv[1])), registry)
            message = {"op": "apply", "version": "v1", "source": "test",
                       **encode_config(config, {})}
            answer = await Worker(sidecar, registry).answer(json.loads(json.dumps(message)))
            assert "error" not in answer, answer
            await sidecar.drain(0)

        asyncio.run(serve())
        print(json.dumps(sorted(sys.modules)))
    """, str(config))
    assert loaded == []
