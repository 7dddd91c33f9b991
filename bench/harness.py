"""The benchmark run: tools, upstream, each scenario measured in turn, one table.

Pinning (2 cores): the proxy under test gets CPU 0 to itself; the upstream nginx and
the load generator share CPU 1. The upstream serves a constant from memory, so on
CPU 1 wrk does most of the work; ``direct`` is then bounded by wrk and nginx sharing
one core, which makes it a ceiling for this setup rather than nginx's own limit.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from bench.certs import issue_certificates
from bench.configs import nginx_upstream_config
from bench.cpu import CpuMeter, format_scaling
from bench.http2 import TARGETS, parse_targets, run_h2
from bench.load import LoadSettings, measure
from bench.procs import BenchError, ManagedProcess, free_port, peak_rss_kib, wait_for_port
from bench.report import Delta, Row, add_ratios, deltas, format_deltas, format_table, write_json
from bench.rounds import format_rounds
from bench.scenarios import (
    BUILTIN,
    Scenario,
    StartContext,
    check_answers,
    load_extra,
    sidemesh_command,
    start,
)
from bench.tools import Tools, ensure_tools, tool_version
from sidemesh.control.ca import CertificateAuthorityError

__all__ = ["main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu(text: str) -> int | None:
    if text.lower() in ("none", "-", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a CPU number or 'none', not {text!r}") from None


def _rates(text: str) -> list[float | None]:
    """``1000``, ``max`` or a comma-separated list of them; None stands for wrk."""
    rates: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower() in ("max", "wrk"):
            rates.append(None)
            continue
        try:
            rate = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"a rate in req/s or 'max', not {part!r}") from None
        if rate <= 0:
            raise argparse.ArgumentTypeError(f"a rate must be positive, not {part!r}")
        rates.append(rate)
    return rates


def _mode(rate: float | None) -> str:
    return f"fixed rate {rate:g} req/s" if rate else "wrk, full speed"


def _parse_args(argv: list[str] | None, scenarios: list[Scenario]) -> argparse.Namespace:
    names = [s.name for s in scenarios]
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark sidemesh against nginx and HAProxy on this machine.",
        epilog="scenarios: " + ", ".join(names),
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--scenarios", default=",".join(names),
                        help="comma-separated scenario names (default: all)")
    parser.add_argument("--rate", type=_rates, default=[None],
                        help="fixed-rate latency mode: this many req/s with bench/fixed_rate.py "
                             "instead of wrk at full speed; 'max,1000' runs every scenario "
                             "in both modes, one table each")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the selected scenarios this many times in turn and "
                             "summarize each ratio's median and range (taken per round)")
    parser.add_argument("--proxy-cpu", type=_cpu, default=0, help="CPU for the proxy (or none)")
    parser.add_argument("--load-cpu", type=_cpu, default=1,
                        help="CPU for wrk / the fixed-rate client (or none)")
    parser.add_argument("--upstream-cpu", type=_cpu, default=1,
                        help="CPU for the upstream nginx (or none)")
    parser.add_argument("--start-timeout", type=float, default=20.0,
                        help="seconds to wait for a process to listen")
    parser.add_argument("--sidemesh-args", default=None,
                        help="extra arguments for `sidemesh proxy -c FILE` (default: "
                             "'--access-log off' when the proxy has that option, as nginx "
                             "and HAProxy run without access logs)")
    parser.add_argument("--no-install", action="store_true",
                        help="never apt-get install missing tools")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--h2", type=parse_targets, nargs="?", const="all", default=[],
                        metavar="TARGETS",
                        help="also run the HTTP/2 targets (h2load; 'all' or a comma-separated "
                             "list, see bench/README.md) after the scenarios")
    args = parser.parse_args(argv)
    args.selected = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.selected) - set(names))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.duration <= 0 or args.connections < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be positive, "
                     "--warmup >= 0")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _upstream_tls(selected: list[Scenario], work_dir: Path) -> tuple[int, Path] | None:
    """A TLS port for the upstream and the ``{certs}`` whose ``b`` it presents, issued
    before it starts; only when a selected template uses ``{upstream_tls}``."""
    if not any("{upstream_tls}" in text for s in selected for text in s.templates):
        return None
    try:
        certs = issue_certificates(work_dir / "upstream-certs")
    except (OSError, ValueError, CertificateAuthorityError) as exc:
        raise BenchError(f"cannot issue the upstream's certificates: {exc}") from exc
    return free_port(), certs


def _upstream(
    tools: Tools, work_dir: Path, cpu: int | None, tls: tuple[int, Path] | None
) -> tuple[ManagedProcess, int]:
    """The upstream nginx, configured but not started, and its port."""
    prefix = work_dir / "upstream"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_upstream_config(prefix, port, tls))
    argv = [tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return ManagedProcess("upstream", argv, work_dir, cpu), port


def _run_scenario(
    scenario: Scenario, ctx: StartContext, settings: LoadSettings, upstream_pid: int
) -> Row:
    if scenario.kind == "haproxy" and ctx.tools.haproxy is None:
        return Row(scenario.name, "skipped: haproxy not installed")
    try:
        running = start(scenario, ctx)
    except BenchError as exc:
        return Row(scenario.name, f"failed: {exc}")
    try:
        meter = CpuMeter([proc.pid for proc in running.processes])
        upstream_meter = CpuMeter([upstream_pid])

        def started() -> None:
            meter.start()
            upstream_meter.start()

        result = measure(settings, running.url, started)
        cpu = meter.seconds()
        load_cpu = upstream_meter.seconds() + (result.client_cpu_s or 0.0)
        peaks = [p for proc in running.processes if (p := peak_rss_kib(proc.pid)) is not None]
        dead = [proc for proc in running.processes if proc.exited()]
        if dead:
            return Row(scenario.name, f"failed: {dead[0].name} exited during the run: "
                                      f"{dead[0].log_tail()}")
        # The fixed-rate client's warm-up is inside the measured CPU: count its requests.
        served = result.requests + round((settings.rate or 0) * settings.warmup)
        return Row(scenario.name, "ok", measurement=result,
                   rss_kib=max(peaks) if peaks else None,
                   cpu_us=cpu * 1e6 / served if running.processes and served else None,
                   load_cpu_us=load_cpu * 1e6 / served if served else None)
    except BenchError as exc:
        return Row(scenario.name, f"failed: {exc}")
    finally:
        running.stop()


def _default_sidemesh_args() -> str:
    """``--access-log off`` if this sidemesh has the option, else nothing."""
    try:
        command = sidemesh_command()
        help_text = subprocess.run(
            [str(command), "proxy", "--help"], capture_output=True, text=True, timeout=30
        ).stdout
    except (BenchError, OSError, subprocess.TimeoutExpired):
        return ""
    if "--access-log" in help_text:
        return "--access-log off"
    print("note: `sidemesh proxy` has no --access-log option; its access log stays on "
          "(written to the harness's log file)")
    return ""


def _cpu_model() -> str:
    """The processor as /proc/cpuinfo names it, with its family and model: ratios from
    two machines do not compare (a CPU's caches and branch prediction favour the
    interpreter's work and nginx's differently)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", platform.processor() or "unknown")
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def _environment(tools: Tools, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "interpreter": sys.executable,
        "nginx": tool_version([tools.nginx, "-v"]),
        "wrk": tool_version([tools.wrk, "--version"]),
        "haproxy": tool_version([tools.haproxy, "-v"]) if tools.haproxy else None,
        "mode": "; ".join(_mode(rate) for rate in args.rate),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "sidemesh_args": args.sidemesh_args,
        "cpus_pinned": {"proxy": args.proxy_cpu, "load": args.load_cpu,
                        "upstream": args.upstream_cpu},
        "loadavg_before": os.getloadavg(),
    }


def _run_mode(
    args: argparse.Namespace,
    by_name: dict[str, Scenario],
    ctx: StartContext,
    settings: LoadSettings,
    upstream_pid: int,
) -> list[Row]:
    mode = _mode(settings.rate)
    if len(args.rate) > 1:
        print(f"== {mode}", flush=True)
    rows = []
    for name in args.selected:
        print(f"-- {name}: {by_name[name].description}", flush=True)
        row = _run_scenario(by_name[name], ctx, settings, upstream_pid)
        row.mode = mode
        print(f"   {row.summary()}", flush=True)
        rows.append(row)
    return rows


def _report_mode(rows: list[Row], titled: bool, shared_cores: int | None) -> list[Delta]:
    """Print one mode's table (and its comparisons) as soon as the mode is done."""
    add_ratios(rows)
    found = deltas(rows)
    print()
    if titled and rows:
        print(f"{rows[0].mode}:\n")
    print(format_table(rows))
    scaling = format_scaling(rows, shared_cores)
    if scaling:
        print()
        print(scaling)
    if found:
        print()
        print(format_deltas(found))
    print(flush=True)
    return found


def _run_all(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    tools = ensure_tools(install=not args.no_install)
    if args.sidemesh_args is None:
        args.sidemesh_args = _default_sidemesh_args()
    env = _environment(tools, args)
    print(f"{env['python']} ({env['interpreter']}); {env['nginx']}; {env['wrk']}; "
          f"{env['haproxy'] or 'no haproxy'}")
    print(f"{env['cpus']} CPUs: {env['cpu_model']}")
    print(f"mode: {env['mode']}, {args.connections} connections, {args.duration:g}s "
          f"(+{args.warmup:g}s warm-up) per scenario; CPUs proxy={args.proxy_cpu} "
          f"load={args.load_cpu} upstream={args.upstream_cpu}; load average "
          f"{' '.join(f'{x:.2f}' for x in env['loadavg_before'])}", flush=True)
    by_name = {s.name: s for s in scenarios}
    # Only when nothing is pinned do the proxy, the load and the upstream share every core.
    unpinned = (args.proxy_cpu, args.load_cpu, args.upstream_cpu) == (None, None, None)
    shared_cores = os.cpu_count() if unpinned else None
    rows: list[Row] = []
    found: list[Delta] = []
    with tempfile.TemporaryDirectory(prefix="sidemesh-bench-") as tmp:
        work_dir = Path(tmp)
        upstream_tls = _upstream_tls([by_name[name] for name in args.selected], work_dir)
        upstream, port = _upstream(tools, work_dir, args.upstream_cpu, upstream_tls)
        try:
            upstream.start()
            wait_for_port("127.0.0.1", port, args.start_timeout, upstream)
            if upstream_tls is not None:
                wait_for_port("127.0.0.1", upstream_tls[0], args.start_timeout, upstream)
            check_answers(f"http://127.0.0.1:{port}/")
            ctx = StartContext(tools, port, work_dir, args.proxy_cpu, args.start_timeout,
                               tuple(shlex.split(args.sidemesh_args)), upstream_tls)
            for rate in args.rate:
                settings = LoadSettings(
                    duration=args.duration, warmup=args.warmup, connections=args.connections,
                    rate=rate, cpu=args.load_cpu, wrk=tools.wrk,
                )
                rounds = []
                for number in range(1, args.rounds + 1):
                    if args.rounds > 1:
                        print(f"== round {number} of {args.rounds}", flush=True)
                    mode_rows = _run_mode(args, by_name, ctx, settings, upstream.pid)
                    for row in mode_rows:
                        row.round = number
                    mode_found = _report_mode(mode_rows, len(args.rate) > 1, shared_cores)
                    rounds.append((mode_rows, mode_found))
                    found.extend(mode_found)
                    rows.extend(mode_rows)
                if args.rounds > 1:
                    print(format_rounds(rounds) + "\n", flush=True)
        finally:
            upstream.stop()
        h2_rows = run_h2(args, tools, work_dir) if args.h2 else []
    path = write_json(args.results_dir, env, rows, found,
                      {"http2": [asdict(row) for row in h2_rows]} if h2_rows else None)
    print(f"\nresults: {path}")
    statuses = [r.status for r in rows] + [r.status for r in h2_rows]
    return 0 if all(not status.startswith("failed") for status in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    scenarios = [*BUILTIN, *load_extra()]
    args = _parse_args(argv, scenarios)
    if args.list:
        for scenario in scenarios:
            print(f"{scenario.name:28} {scenario.description} [{scenario.source}]")
        for target in TARGETS:
            print(f"{target.name:28} {target.description} [--h2]")
        return 0
    previous = {sig: signal.signal(sig, _raise_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run_all(args, scenarios)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
