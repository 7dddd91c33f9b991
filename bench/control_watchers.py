"""Control plane at fleet scale: N long-polling sidecars on one ``sidemesh control``.

    .venv/bin/python bench/control_watchers.py --watchers 100,1000 [--services 1,10]

For each number of services and of watchers: a real control plane (``python -m sidemesh
control``, a fresh data dir, SQLite unless ``--store``) gets a config and one sidecar
token per service; client processes park N watches (each with its own proxy id,
spread over the services) and the server's RSS before and after gives the memory per
watcher; then a new config is PUT to every service at once and each watcher's push
latency is the time from its service's PUT being sent to the new version's arrival.
Like the sidecar agent, a watcher then reports ACK and polls again (``--no-ack``: it
only receives). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Run as a script, only bench/ is on sys.path; the harness imports itself as `bench.*`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.procs import BenchError, ManagedProcess, cpu_prefix, free_port, wait_for_port

__all__ = ["main"]

SUMMARY = "Memory per parked watch and push latency of one sidemesh control plane."
STEP_TIMEOUT = 60.0
RESULTS = Path(__file__).resolve().parent / "results"
CLIENT = Path(__file__).resolve().parent / "watch_clients.py"


def service_config(service: str, version: int, upstreams: int = 5) -> dict[str, Any]:
    """A sidecar config with ``upstreams`` clusters (three endpoints each) and as many
    routes: about 1.5 KB of JSON with 5, 14 KB with 50."""
    names = [f"upstream-{i:03d}" for i in range(upstreams)]
    return {
        "node": {"service": service},
        "clusters": [{"name": n, "connect_timeout": "1s",
                      "endpoints": [{"address": f"10.0.{i % 250}.{e}:8080"} for e in range(1, 4)]}
                     for i, n in enumerate(names)],
        "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "routes": [
            {"name": n, "match": {"prefix": f"/{n}/v{version}"}, "cluster": n,
             "timeout": "15s"} for n in names]}],
    }


class _Client:
    """A ``bench/watch_clients.py`` process in its own process group, always killed by
    :meth:`stop`."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    @classmethod
    async def start(cls, spec: dict[str, Any], cpu: int | None, log: Path) -> _Client:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *cpu_prefix(cpu), sys.executable, str(CLIENT),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=64 * 1024 * 1024, start_new_session=True)
        client = cls(proc, log)
        await client.say(json.dumps(spec))
        return client

    async def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def hear(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"a client process said nothing for {timeout:.0f}s") from None
        if not line:
            tail = " | ".join(self.log.read_text(errors="replace").splitlines()[-3:])
            raise BenchError(f"a client process exited: {tail or 'no output'}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5)


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


async def _steady_rss(pid: int, timeout: float = 10.0) -> int:
    """VmRSS once five samples 0.2 s apart stay within 64 KiB (else the last one)."""
    samples: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = [*samples[-4:], _proc_kib(pid, "VmRSS")]
        if len(samples) == 5 and max(samples) - min(samples) <= 64:
            break
        await asyncio.sleep(0.2)
    return samples[-1]


async def _until(what: str, check: Callable[[], Awaitable[bool]],
                 timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not within {timeout:.0f}s")
        await asyncio.sleep(0.25)


class _Fleet:
    """One control plane with its services, configs and tokens."""

    def __init__(self, server: ManagedProcess, address: tuple[str, int], api: httpx.AsyncClient,
                 args: argparse.Namespace, services: list[str], log_dir: Path) -> None:
        self.server, self.address, self.api = server, address, api
        self.args, self.log_dir = args, log_dir
        self.services = services
        self.version = dict.fromkeys(services, 0)
        self.tokens: dict[str, str] = {}

    async def setup(self) -> None:
        for service in self.services:
            await self.put(service)
            answer = await self.api.post("/v1/tokens", json={"service": service})
            self.tokens[service] = answer.raise_for_status().json()["token"]

    async def put(self, service: str) -> tuple[float, float]:
        """Store the service's next config; when (monotonic) it was sent and answered."""
        doc = service_config(service, self.version[service] + 1, self.args.upstreams)
        sent = time.monotonic()
        answer = (await self.api.put(f"/v1/services/{service}/config", json=doc)).raise_for_status()
        self.version[service] = answer.json()["version"]
        return sent, time.monotonic()

    async def parked(self, proxies: set[str]) -> bool:
        # With the SQLite store a watch registers its proxy id and parks without yielding
        # to the loop in between, so a listed id is a parked watch (with etcd, nearly:
        # the steady RSS waited for next covers the rest).
        listed = (await self.api.get("/v1/proxies")).raise_for_status().json()["proxies"]
        return proxies <= {p["id"] for p in listed}

    async def round(self, count: int, tag: str) -> dict[str, Any]:
        """Park ``count`` watchers, then push a new config to every service."""
        plan = []
        for i in range(count):
            service = self.services[i % len(self.services)]
            plan.append((service, self.tokens[service], f"{service}-{tag}-{i:05d}",
                         self.version[service]))
        spec = {"host": self.address[0], "port": self.address[1], "ack": self.args.ack}
        shares = [plan[k::self.args.clients] for k in range(self.args.clients)]
        clients: list[_Client] = []
        try:
            for share in filter(None, shares):
                clients.append(await _Client.start({**spec, "watchers": share},
                                                   self.args.client_cpu,
                                                   self.log_dir / "clients.log"))
            started = time.monotonic()
            sent = sum([(await c.hear(STEP_TIMEOUT))["sent"] for c in clients])
            if sent != count:
                raise BenchError(f"only {sent} of {count} watches could be sent")
            await _until(f"{count} parked watches", lambda: self.parked({p[2] for p in plan}))
            parked_s = time.monotonic() - started
            rss = await _steady_rss(self.server.pid)
            puts = await asyncio.gather(*(self.put(s) for s in self.services))
            sent_at = {s: put[0] for s, put in zip(self.services, puts, strict=True)}
            reports = []
            for client in clients:
                try:
                    reports.append(await client.hear(self.args.push_timeout))
                except BenchError:
                    await client.say("report")
                    reports.append(await client.hear(STEP_TIMEOUT))
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
        service_of = {p[2]: p[0] for p in plan}
        arrivals = [(at - sent_at[service_of[proxy]], at, acked) for r in reports
                    for proxy, at, version, acked in r["received"]
                    if version == self.version[service_of[proxy]]]
        return {"parked_s": parked_s, "rss_parked_kib": rss, "arrivals": arrivals,
                "first_put": min(sent for sent, _ in puts),
                "put_ms": 1000 * max(answered - sent for sent, answered in puts),
                "errors": [e for r in reports for e in r["errors"]]}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _measure(args: argparse.Namespace, services: int, watchers: int,
                   work: Path) -> dict[str, Any]:
    names = [f"svc-{i:02d}" for i in range(services)]
    token_file = work / "admin.token"
    admin = secrets.token_urlsafe(32)
    token_file.write_text(admin + "\n")
    token_file.chmod(0o600)
    host, port = "127.0.0.1", free_port()
    argv = [sys.executable, "-m", "sidemesh", "control", "--data", str(work / "data"),
            "--listen", f"{host}:{port}", "--admin-token-file", str(token_file)]
    if args.store:
        argv += ["--store", args.store, "--store-prefix", f"/sidemesh-bench-{secrets.token_hex(4)}"]
    server = ManagedProcess("control", argv, work, cpu=args.server_cpu)
    row: dict[str, Any] = {"services": services, "watchers": watchers, "ack": args.ack}
    try:
        server.start()
        wait_for_port(host, port, 20, server)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=STEP_TIMEOUT,
                                     headers={"authorization": f"Bearer {admin}"}) as api:
            fleet = _Fleet(server, (host, port), api, args, names, work)
            await fleet.setup()
            # Warm-up: every code path of a round has run once before the idle RSS.
            await fleet.round(2 * services, "warm")
            row["rss_idle_kib"] = await _steady_rss(server.pid)
            found = await fleet.round(watchers, "w")
        if server.exited():
            raise BenchError(f"the control plane exited: {server.log_tail()}")
        latencies = [lat for lat, _, _ in found["arrivals"]]
        acks = [acked for _, _, acked in found["arrivals"] if acked is not None]
        row.update(
            status="ok" if len(latencies) == watchers else
            f"failed: {len(latencies)} of {watchers} received the new version",
            rss_parked_kib=found["rss_parked_kib"],
            per_watcher_kib=(found["rss_parked_kib"] - row["rss_idle_kib"]) / watchers,
            peak_rss_kib=_proc_kib(server.pid, "VmHWM"),
            parked_s=found["parked_s"], put_ms=found["put_ms"], received=len(latencies),
            errors=found["errors"][:5], error_count=len(found["errors"]))
        if latencies:
            row.update(p50_ms=1000 * _percentile(latencies, 0.5),
                       p99_ms=1000 * _percentile(latencies, 0.99),
                       max_ms=1000 * max(latencies),
                       all_received_ms=1000 * (max(at for _, at, _ in found["arrivals"])
                                               - found["first_put"]))
        if acks and len(acks) == watchers:
            row["all_acked_ms"] = 1000 * (max(acks) - found["first_put"])
    except (BenchError, httpx.HTTPError, OSError) as exc:
        row["status"] = f"failed: {exc} ({server.log_tail()})"
    finally:
        server.stop()
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["services", "watchers", "idle RSS", "parked RSS", "per watcher", "parked in",
            "PUT answered", "p50", "p99", "max", "all received", "all ACKed", "status"]

    def cell(row: dict[str, Any], key: str, form: str, scale: float = 1.0) -> str:
        return form.format(row[key] * scale) if key in row else "-"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["services"]), f"{r['watchers']:,}",
                 cell(r, "rss_idle_kib", "{:.1f} MiB", 1 / 1024),
                 cell(r, "rss_parked_kib", "{:.1f} MiB", 1 / 1024),
                 cell(r, "per_watcher_kib", "{:.1f} KiB"), cell(r, "parked_s", "{:.1f} s"),
                 *(cell(r, key, "{:.0f} ms")
                   for key in ("put_ms", "p50_ms", "p99_ms", "max_ms", "all_received_ms",
                               "all_acked_ms")),
                 r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _raise_fd_limit(needed: int) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one (inherited by the server and the clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise BenchError(f"{needed} open files needed, the hard limit is {target} "
                         "(raise it: ulimit -Hn, or limits.conf)")
    return target, hard


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cpu(value: str) -> int | None:
    return None if value == "none" else int(value)


def _counts(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=SUMMARY)
    p.add_argument("--watchers", type=_counts, default=[100, 1000], help="e.g. 100,1000")
    p.add_argument("--services", type=_counts, default=[1, 10],
                   help="services the watchers are spread over; one row per value (1,10)")
    p.add_argument("--upstreams", type=int, default=5,
                   help="clusters and routes in each service's config (5: ~1.5 KB of JSON)")
    p.add_argument("--clients", type=int, default=2, help="client processes (2)")
    p.add_argument("--no-ack", dest="ack", action="store_false",
                   help="watchers only receive: no ACK report, no next poll")
    p.add_argument("--store", help="passed to sidemesh control --store (etcd://HOST:PORT)")
    p.add_argument("--push-timeout", type=float, default=30.0,
                   help="seconds the pushed version may take to reach every watcher")
    p.add_argument("--server-cpu", type=_cpu, default=0, help="CPU of the control plane (0)")
    p.add_argument("--client-cpu", type=_cpu, default=1, help="CPU of the clients (1)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        nofile = _raise_fd_limit(max(args.watchers) + 200)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    env = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
           "cpus": os.cpu_count(), "interpreter": sys.executable,
           "python": f"{platform.python_implementation()} {platform.python_version()}",
           "store": args.store or "sqlite", "ack": args.ack, "clients": args.clients,
           "config_bytes": len(json.dumps(service_config("svc-00", 1, args.upstreams))),
           "cpus_pinned": {"server": args.server_cpu, "clients": args.client_cpu},
           "nofile": nofile, "loadavg_before": os.getloadavg()}
    print(f"{env['python']}; store {env['store']}; configs of {env['config_bytes']:,} bytes; "
          f"{args.clients} client processes; "
          f"{'ACK + next poll' if args.ack else 'receive only'}; open files {nofile[0]}; "
          f"load average {' '.join(f'{x:.2f}' for x in env['loadavg_before'])}", flush=True)
    rows = []
    previous = {sig: signal.signal(sig, _raise_interrupt)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for services in args.services:
            for watchers in args.watchers:
                with tempfile.TemporaryDirectory(prefix="sidemesh-watchers-") as tmp:
                    row = asyncio.run(_measure(args, services, watchers, Path(tmp)))
                print(f"-- {services} services, {watchers} watchers: {row['status']}",
                      flush=True)
                rows.append(row)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print()
    print(_table(rows))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"control-watchers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    print(f"\nresults: {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
