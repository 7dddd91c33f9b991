"""The sidecar configs the benchmark generates are ones the proxy accepts.

A scenario file that drifts from the config format would otherwise only show up as a
"failed" row in a benchmark run. Plugins a scenario names but that are not installed
here are the one error tolerated: the harness reports those scenarios as failed.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidemesh import testing
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_scenarios(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("bench.scenarios")


def _sidecars(module: ModuleType) -> list[tuple[str, int, dict[str, Any]]]:
    from bench.configs import render_template

    found = []
    for scenario in [*module.BUILTIN, *module.load_extra()]:
        if scenario.kind != "sidemesh":
            continue
        for index, template in enumerate(scenario.templates):
            values = {
                "upstream": "127.0.0.1:18080",
                "upstream_tls": "127.0.0.1:18443",
                "listen": f"127.0.0.1:{18100 + index}",
                "admin": f"127.0.0.1:{18200 + index}",
                "next": f"127.0.0.1:{18101 + index}",
                "certs": "/tmp/sidemesh-bench-certs",
                "deadport": "18999",
            }
            found.append((scenario.name, index, render_template(template, values)))
    return found


def _plugin_names(document: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for listener in document.get("listeners") or []:
        for holder in [listener, *(listener.get("routes") or [])]:
            names.update(entry.get("name") for entry in holder.get("plugins") or [])
    return names


def test_bench_sidecar_configs_validate(bench_scenarios: ModuleType) -> None:
    registry = PluginRegistry.load()
    sidecars = _sidecars(bench_scenarios)
    assert any(name == "sidemesh" for name, _, _ in sidecars)
    for name, index, document in sidecars:
        missing = _plugin_names(document) - set(registry.names())
        errors = [
            error for error in validate(document, registry)
            if not (error.rule == "plugin"
                    and any(f"unknown plugin {m!r}" in error.message for m in missing))
        ]
        assert errors == [], f"{name} sidecar {index}: {[str(e) for e in errors]}"


def test_upstream_serves_tls_only_for_scenarios_that_ask(
    bench_scenarios: ModuleType, tmp_path: Path
) -> None:
    from bench.configs import nginx_upstream_config

    plain = nginx_upstream_config(tmp_path, 18080)
    assert "ssl" not in plain
    certs = tmp_path / "certs"
    tls = nginx_upstream_config(tmp_path, 18080, (18443, certs))
    assert "listen 127.0.0.1:18443 ssl backlog=4096;" in tls
    assert f"ssl_certificate {certs / 'b.crt'};" in tls
    assert f"ssl_certificate_key {certs / 'b.key'};" in tls
    assert tls.count("return 200") == 2


def test_a_chain_baseline_starts_its_hops_in_a_row(
    bench_scenarios: ModuleType, tmp_path: Path
) -> None:
    """chain-floor: two real relays, the client's one forwarding to the other, which
    forwards to the upstream; start() checks the upstream's body comes back through both."""
    from bench.configs import RESPONSE_BODY
    from bench.tools import Tools

    chain = next(s for s in bench_scenarios.BUILTIN if s.name == "chain-floor")
    with testing.Upstream(lambda _: testing.Reply(body=RESPONSE_BODY.encode())) as upstream:
        ctx = bench_scenarios.StartContext(
            Tools("nginx", "wrk", None), upstream.port, tmp_path, None, 20.0
        )
        running = bench_scenarios.start(chain, ctx)
        pids = [process.pid for process in running.processes]
        try:
            first, second = running.processes[1], running.processes[0]
            listen = running.url.rsplit(":", 1)[1].strip("/")
            assert first.argv[-2] == listen
            assert first.argv[-1] == second.argv[-2]  # the first hop's upstream: the second
            assert second.argv[-1] == str(upstream.port)
        finally:
            running.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
