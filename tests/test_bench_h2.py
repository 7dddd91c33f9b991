"""The HTTP/2 benchmark reads h2load's figures right and generates configs that run.

A misread h2load summary or a config nginx refuses would otherwise only show up as wrong
figures or a "failed" row in a benchmark run.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import validate

REPO = Path(__file__).resolve().parents[1]

# h2load 1.52's summary of a run where 20 answers were 503 and 10 streams were reset.
H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and \
5s of main duration for measurements.
Application protocol: h2c

finished in 5.00s, 194.00 req/s, 16.10KB/s
requests: 1000 total, 1000 started, 990 done, 970 succeeded, 30 failed, 10 errored, \
2 timeout
status codes: 970 2xx, 0 3xx, 0 4xx, 20 5xx
traffic: 80.49KB (82423) total, 66.52KB (68116) headers (space savings 50.00%), \
7.83KB (8020) data
                     min         max         mean         sd        +/- sd
time for request:     2.12ms     24.24ms      8.46ms      3.41ms    79.38%
"""


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    # bench/ is a directory of scripts at the repository root, not an installed package.
    monkeypatch.syspath_prepend(str(REPO))
    return {name: importlib.import_module(f"bench.{name}")
            for name in ("h2load", "h2_configs", "http2", "procs", "tools")}


def _log(latencies_us: list[int], failed: int = 0) -> str:
    lines = [f"17960217025{i:05d}\t200\t{us}" for i, us in enumerate(latencies_us)]
    lines += [f"17960217026{i:05d}\t-1\t5" for i in range(failed)]
    return "\n".join(lines) + "\n"


def test_h2load_summary_and_log_give_rate_percentiles_and_errors(
    bench: dict[str, ModuleType],
) -> None:
    # 100 answers of 1..100 ms: p50 is the 50th, p99 the 99th; failed streams don't count.
    log = _log([ms * 1000 for ms in range(100, 0, -1)], failed=10)
    result = bench["h2load"].parse_h2load(H2LOAD_OUTPUT, log)
    assert result.rps == 194.0
    assert result.requests == 970
    assert (result.p50_ms, result.p99_ms) == (50.0, 99.0)
    assert result.bad_status == 20
    # 30 failed, 20 of them the 503s; plus the 2 that timed out.
    assert result.socket_errors == 12


def test_h2load_output_without_summary_is_an_error(bench: dict[str, ModuleType]) -> None:
    with pytest.raises(bench["procs"].BenchError, match="no summary"):
        bench["h2load"].parse_h2load("h2load: connection refused\n", "")


def test_h2load_argv_measures_many_streams_over_few_connections(
    bench: dict[str, ModuleType], tmp_path: Path
) -> None:
    load = bench["h2load"].H2Load(clients=4, streams=32)
    argv = bench["h2load"].h2load_argv("/usr/bin/h2load", load, "http://127.0.0.1:1/", 5.0,
                                       tmp_path / "log", None)
    assert argv == ["/usr/bin/h2load", "-t", "1", "-c", "4", "-m", "32", "-D", "5",
                    f"--log-file={tmp_path / 'log'}", "http://127.0.0.1:1/"]
    assert load.label == "h2load -c 4 -m 32"


def test_unknown_h2_target_names_are_refused(bench: dict[str, ModuleType]) -> None:
    http2 = bench["http2"]
    assert [t.name for t in http2.parse_targets("all")] == [t.name for t in http2.TARGETS]
    assert [t.name for t in http2.parse_targets("h2-sidemesh")] == ["h2-sidemesh"]
    with pytest.raises(Exception, match="unknown HTTP/2 target"):
        http2.parse_targets("h2-envoy")


@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_sidemesh_h2_configs_validate(bench: dict[str, ModuleType], protocol: str) -> None:
    document = bench["h2_configs"].sidemesh_h2_config(
        "127.0.0.1:18100", "127.0.0.1:18200", "127.0.0.1:18080", protocol)
    assert validate(document, PluginRegistry.load()) == []
    expected = "http2" if protocol == "h2" else None
    assert document["clusters"][0].get("protocol") == expected


def _nginx(bench: dict[str, ModuleType]) -> str:
    nginx = bench["tools"].find_tool("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    return str(nginx)


@pytest.mark.parametrize("upstream", ["h1", "h2"])
def test_nginx_h2_proxy_configs_pass_nginx_t(
    bench: dict[str, ModuleType], tmp_path: Path, upstream: str
) -> None:
    nginx = _nginx(bench)
    conf = tmp_path / "nginx.conf"
    text = bench["h2_configs"].nginx_h2_proxy_config(tmp_path, 18301, 18080, upstream, 18302)
    conf.write_text(text)
    assert "listen 127.0.0.1:18301 http2" in text
    assert ("grpc_pass grpc://backend" in text) == (upstream == "h2")
    checked = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf),
                              "-e", str(tmp_path / "error.log")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_h2_upstream_answers_the_bench_body_over_h2c_and_http1(
    bench: dict[str, ModuleType], tmp_path: Path
) -> None:
    nginx = _nginx(bench)
    procs = bench["procs"]
    h1_port, h2_port = procs.free_port(), procs.free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(bench["h2_configs"].nginx_h2_upstream_config(tmp_path, h1_port, h2_port))
    upstream = procs.ManagedProcess(
        "upstream", [nginx, "-p", str(tmp_path), "-c", str(conf),
                     "-e", str(tmp_path / "error.log")], tmp_path)
    try:
        upstream.start()
        procs.wait_for_port("127.0.0.1", h2_port, 10.0, upstream)
        status, body = bench["h2load"].h2_get("127.0.0.1", h2_port, timeout=5.0)
        assert status == 200
        assert body == importlib.import_module("bench.configs").RESPONSE_BODY
        importlib.import_module("bench.scenarios").check_answers(
            f"http://127.0.0.1:{h1_port}/", timeout=5.0)
    finally:
        upstream.stop()
