"""The HTTP/2 scenarios (``bench/run.py --h2``): h2load, many streams over few
connections, against nginx and sidemesh as HTTP/2 proxies, in one run.

They have their own upstream nginx: the main table's upstream config (same body, same
settings) also listening for h2c, so a proxy can reach it over HTTP/1.1 or HTTP/2.
Pinning is the main table's: the proxy on ``--proxy-cpu``, h2load (and wrk) on
``--load-cpu``, the upstream on ``--upstream-cpu``. The targets whose upstream speaks
HTTP/1.1 are measured with wrk over HTTP/1.1 too, same process and route, which gives
what HTTP/2 itself costs the proxy.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from bench.configs import RESPONSE_BODY
from bench.cpu import CpuMeter
from bench.h2_configs import (
    UpstreamProtocol,
    nginx_h2_proxy_config,
    nginx_h2_upstream_config,
    sidemesh_h2_config,
)
from bench.h2_report import H2Row, add_h2_ratios, format_h2_costs, format_h2_table, h1_load_label
from bench.h2load import H2Load, h2_get, h2load_argv, parse_h2load, run_h2load
from bench.load import LoadSettings, Measurement, measure
from bench.procs import BenchError, ManagedProcess, free_port, peak_rss_kib, wait_for_port
from bench.scenarios import check_answers, sidemesh_command
from bench.tools import Tools, find_tool

__all__ = ["LOADS", "TARGETS", "H2Target", "format_h2", "parse_targets", "run_h2"]


@dataclass(frozen=True)
class H2Target:
    name: str
    kind: Literal["direct", "nginx", "sidemesh"]
    #: what the target speaks to the upstream.
    upstream: UpstreamProtocol
    description: str

    @property
    def path(self) -> str:
        return "h2, no proxy" if self.kind == "direct" else f"h2 -> {self.upstream}"


TARGETS: tuple[H2Target, ...] = (
    H2Target("h2-direct", "direct", "h2", "h2load -> the upstream's h2c port: the ceiling"),
    H2Target("h2-nginx", "nginx", "h2",
             "nginx, 1 worker, `listen http2`, `grpc_pass grpc://` to the upstream's h2c"),
    H2Target("h2-sidemesh", "sidemesh", "h2",
             "sidemesh, one / route to a cluster with `protocol: http2`"),
    H2Target("h2-nginx-h1", "nginx", "h1",
             "nginx, 1 worker, `listen http2`, proxy_pass over HTTP/1.1 keep-alive"),
    H2Target("h2-sidemesh-h1", "sidemesh", "h1",
             "sidemesh, one / route to an HTTP/1.1 cluster"),
)
#: many streams over few connections.
LOADS: tuple[H2Load, ...] = (H2Load(clients=4, streams=32), H2Load(clients=1, streams=100))
_READY = re.compile(r"request path ([^\"]+)\"")


def parse_targets(text: str) -> list[H2Target]:
    """``all`` or a comma-separated list of target names (argparse ``type``)."""
    by_name = {target.name: target for target in TARGETS}
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(TARGETS)
    unknown = [name for name in names if name not in by_name]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown HTTP/2 target(s) {', '.join(unknown) or text!r}; "
            f"known: all, {', '.join(by_name)}")
    return [by_name[name] for name in names]


@dataclass
class _Context:
    args: argparse.Namespace
    tools: Tools
    h2load: str
    work_dir: Path
    upstream_h1: int
    upstream_h2: int


@dataclass
class _Started:
    processes: list[ManagedProcess]
    h2_port: int
    #: where the target takes HTTP/1.1 (only targets with an HTTP/1.1 upstream).
    h1_port: int | None = None

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _start_nginx(target: H2Target, ctx: _Context, started: _Started) -> None:
    prefix = ctx.work_dir / f"{target.name}-proxy"
    prefix.mkdir()
    h1_port = free_port()
    upstream = ctx.upstream_h2 if target.upstream == "h2" else ctx.upstream_h1
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_h2_proxy_config(prefix, started.h2_port, upstream, target.upstream,
                                          h1_port))
    argv = [ctx.tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = ManagedProcess(target.name, argv, ctx.work_dir, ctx.args.proxy_cpu)
    started.processes.append(process.start())
    wait_for_port("127.0.0.1", started.h2_port, ctx.args.start_timeout, process)
    if target.upstream == "h1":
        started.h1_port = h1_port


def _start_sidemesh(target: H2Target, ctx: _Context, started: _Started) -> None:
    upstream = ctx.upstream_h2 if target.upstream == "h2" else ctx.upstream_h1
    listen = f"127.0.0.1:{started.h2_port}"
    document = sidemesh_h2_config(listen, f"127.0.0.1:{free_port()}",
                                  f"127.0.0.1:{upstream}", target.upstream)
    config = ctx.work_dir / f"{target.name}.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    argv = [str(sidemesh_command()), "proxy", "-c", str(config),
            *shlex.split(ctx.args.sidemesh_args or "")]
    process = ManagedProcess(target.name, argv, ctx.work_dir, ctx.args.proxy_cpu)
    started.processes.append(process.start())
    wait_for_port("127.0.0.1", started.h2_port, ctx.args.start_timeout, process)
    if target.upstream == "h1":
        started.h1_port = started.h2_port


def _start(target: H2Target, ctx: _Context) -> _Started:
    """Start the target and check it answers the upstream's body over h2c (and HTTP/1.1
    where it is measured with both); stopped again when this raises."""
    started = _Started([], ctx.upstream_h2 if target.kind == "direct" else free_port())
    try:
        if target.kind == "nginx":
            _start_nginx(target, ctx, started)
        elif target.kind == "sidemesh":
            _start_sidemesh(target, ctx, started)
        try:
            status, body = h2_get("127.0.0.1", started.h2_port)
        except OSError as exc:
            raise BenchError(f"h2c GET failed: {exc}") from exc
        if status != 200 or body != RESPONSE_BODY:
            raise BenchError(f"h2c GET answered {status}, not the upstream's body: "
                             f"{body.strip()[:200]!r}")
        if started.h1_port is not None:
            check_answers(f"http://127.0.0.1:{started.h1_port}/")
    except BenchError as exc:
        logs = "; ".join(f"{p.name}: {p.log_tail(3)}" for p in started.processes)
        started.stop()
        raise BenchError(f"{exc} [{logs}]" if logs else str(exc)) from exc
    except BaseException:
        started.stop()
        raise
    if target.kind == "sidemesh":
        # A compiled or an interpreted request path halves or doubles the figures.
        ready = _READY.search(started.processes[0].log_path.read_text(errors="replace"))
        print(f"   request path {ready.group(1) if ready else 'unknown (no ready line)'}",
              flush=True)
    return started


def _h2load(ctx: _Context, load: H2Load, port: int, meter: CpuMeter) -> Measurement:
    url = f"http://127.0.0.1:{port}/"
    args = ctx.args
    if args.warmup >= 0.5:
        run_h2load(h2load_argv(ctx.h2load, load, url, args.warmup, None, args.load_cpu),
                   args.warmup)
    log_file = ctx.work_dir / "h2load.log"
    # h2load appends to an existing log file: each run must start from an empty one.
    log_file.unlink(missing_ok=True)
    argv = h2load_argv(ctx.h2load, load, url, args.duration, log_file, args.load_cpu)
    meter.start()
    output = run_h2load(argv, args.duration)
    return parse_h2load(output, log_file.read_text())


def _row(target: str, path: str, load: str, started: _Started, meter: CpuMeter,
         result: Measurement) -> H2Row:
    cpu = meter.seconds()
    peaks = [p for proc in started.processes if (p := peak_rss_kib(proc.pid)) is not None]
    dead = [proc for proc in started.processes if proc.exited()]
    if dead:
        return H2Row(target, path, load,
                     f"failed: {dead[0].name} exited during the run: {dead[0].log_tail()}")
    return H2Row(target, path, load, "ok", result,
                 max(peaks) if peaks else None,
                 cpu * 1e6 / result.requests if started.processes and result.requests
                 else None)


def _measure_target(target: H2Target, ctx: _Context) -> list[H2Row]:
    h1_label = h1_load_label(ctx.args.connections)
    loads = [load.label for load in LOADS]
    try:
        started = _start(target, ctx)
    except BenchError as exc:
        return [H2Row(target.name, target.path, label, f"failed: {exc}") for label in loads]
    rows = []
    try:
        meter = CpuMeter([proc.pid for proc in started.processes])
        if started.h1_port is not None:
            settings = LoadSettings(
                duration=ctx.args.duration, warmup=ctx.args.warmup,
                connections=ctx.args.connections, rate=None, cpu=ctx.args.load_cpu,
                wrk=ctx.tools.wrk)
            h1_path = f"h1 -> {target.upstream}"
            try:
                result = measure(settings, f"http://127.0.0.1:{started.h1_port}/", meter.start)
                rows.append(_row(target.name, h1_path, h1_label, started, meter, result))
            except BenchError as exc:
                rows.append(H2Row(target.name, h1_path, h1_label, f"failed: {exc}"))
        for load in LOADS:
            try:
                result = _h2load(ctx, load, started.h2_port, meter)
                rows.append(_row(target.name, target.path, load.label, started, meter,
                                 result))
            except BenchError as exc:
                logs = "; ".join(f"{p.name}: {p.log_tail(3)}" for p in started.processes)
                rows.append(H2Row(target.name, target.path, load.label,
                                  f"failed: {exc} [{logs}]"))
            last = rows[-1].measurement
            if last is not None and last.bad_status + last.socket_errors:
                for proc in started.processes:
                    print(f"   {proc.name} log: {proc.log_tail(5)}", flush=True)
    finally:
        started.stop()
    return rows


def run_h2(args: argparse.Namespace, tools: Tools, work_dir: Path) -> list[H2Row]:
    """Measure ``args.h2``'s targets in turn against their own upstream and print the
    tables; one row per target and load, a single failed row when nothing could run."""
    print("\n== HTTP/2", flush=True)
    try:
        rows = _run_targets(args, tools, work_dir)
    except BenchError as exc:
        rows = [H2Row("HTTP/2", "-", "-", f"failed: {exc}")]
    print(f"\n{format_h2(rows)}\n", flush=True)
    return rows


def _run_targets(args: argparse.Namespace, tools: Tools, work_dir: Path) -> list[H2Row]:
    h2load = find_tool("h2load")
    if h2load is None:
        raise BenchError("h2load not found; install it with: apt-get install -y nghttp2-client")
    prefix = work_dir / "h2-upstream"
    prefix.mkdir()
    h1_port, h2_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_h2_upstream_config(prefix, h1_port, h2_port))
    argv = [tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    upstream = ManagedProcess("h2-upstream", argv, work_dir, args.upstream_cpu)
    ctx = _Context(args, tools, h2load, work_dir, h1_port, h2_port)
    rows: list[H2Row] = []
    try:
        upstream.start()
        wait_for_port("127.0.0.1", h2_port, args.start_timeout, upstream)
        check_answers(f"http://127.0.0.1:{h1_port}/")
        for target in args.h2:
            print(f"-- {target.name}: {target.description}", flush=True)
            for row in _measure_target(target, ctx):
                summary = (row.status if row.measurement is None else
                           f"{row.measurement.rps:,.0f} req/s, p99 "
                           f"{row.measurement.p99_ms or 0:.2f} ms, errors "
                           f"{row.measurement.bad_status + row.measurement.socket_errors}")
                print(f"   {row.load}: {summary}", flush=True)
                rows.append(row)
    finally:
        upstream.stop()
    return rows


def format_h2(rows: list[H2Row]) -> str:
    """The HTTP/2 table, ratios to nginx included, and what HTTP/2 costs over HTTP/1.1."""
    add_h2_ratios(rows, {target.name for target in TARGETS if target.kind == "nginx"})
    costs = format_h2_costs(rows)
    text = "HTTP/2 (h2load, many streams over few connections):\n\n" + format_h2_table(rows)
    if costs:
        text += ("\n\nHTTP/2 against HTTP/1.1, same process and route:\n\n" + costs)
    return text
