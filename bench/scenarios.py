"""What sits between wrk and the upstream in each scenario, and how to start it.

Built-ins: ``direct``, ``nginx``, ``haproxy``, ``python-floor``, ``sidemesh``. Every
``scenarios/*.yaml`` file adds a sidemesh scenario named after the file: a sidecar
config template whose ``{upstream}``, ``{listen}``, ``{admin}`` (and ``{next}``,
``{certs}``, ``{deadport}``, ``{upstream_tls}``) are filled in at run time.
A file with several YAML documents (``---``) is a chain of sidecars, the first one
facing the client and each ``{next}`` the listener of the following one.
"""

from __future__ import annotations

import http.client
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from bench.certs import issue_certificates
from bench.configs import (
    RESPONSE_BODY,
    haproxy_config,
    nginx_proxy_config,
    render_template,
    sidemesh_config,
)
from bench.procs import BenchError, ManagedProcess, free_port, wait_for_port
from bench.tools import Tools
from sidemesh.control.ca import CertificateAuthorityError

__all__ = [
    "BUILTIN",
    "SCENARIO_DIR",
    "Running",
    "Scenario",
    "StartContext",
    "check_answers",
    "load_extra",
    "sidemesh_command",
    "start",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_DOCUMENT_SEPARATOR = re.compile(r"^---\s*$", re.MULTILINE)
Kind = Literal["direct", "nginx", "haproxy", "python-floor", "sidemesh"]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    description: str
    #: sidemesh only: one config template per sidecar, the first one facing the client.
    templates: tuple[str, ...] = ()
    source: str = "built-in"
    #: nginx's worker_processes, sidemesh's --concurrency.
    workers: int = 1
    #: nginx and python-floor: proxies in a row, each one's upstream the next one.
    hops: int = 1


@dataclass(frozen=True)
class StartContext:
    tools: Tools
    upstream_port: int
    work_dir: Path
    proxy_cpu: int | None
    start_timeout: float
    #: extra arguments after ``sidemesh proxy -c FILE``.
    sidemesh_args: tuple[str, ...] = ()
    #: the upstream's TLS port (``{upstream_tls}``) and the ``{certs}`` directory whose
    #: ``b`` certificate it presents; None when no selected scenario uses it.
    upstream_tls: tuple[int, Path] | None = None


@dataclass
class Running:
    url: str
    #: the proxy processes (none for ``direct``); their peak RSS is reported.
    processes: list[ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _sidemesh_template() -> str:
    return yaml.safe_dump(
        sidemesh_config("{listen}", "{admin}", "{upstream}"), sort_keys=False
    )


BUILTIN: tuple[Scenario, ...] = (
    Scenario("direct", "direct", "wrk -> upstream nginx, no proxy: the ceiling"),
    Scenario("nginx", "nginx", "nginx reverse proxy, 1 worker, upstream keep-alive"),
    Scenario("haproxy", "haproxy", "HAProxy, 1 thread, http-reuse always"),
    Scenario(
        "python-floor", "python-floor",
        "bare asyncio + httptools relay with keep-alive pool: what Python allows here",
    ),
    Scenario(
        "sidemesh", "sidemesh", "sidemesh proxy, one / route, no plugins",
        templates=(_sidemesh_template(),),
    ),
    Scenario("nginx-2w", "nginx", "nginx reverse proxy, 2 workers (worker_processes 2)",
             workers=2),
    Scenario(
        "sidemesh-2w", "sidemesh", "sidemesh proxy --concurrency 2, one / route, no plugins",
        templates=(_sidemesh_template(),), workers=2,
    ),
    Scenario(
        "chain-nginx", "nginx",
        "two nginx reverse proxies in a row, 1 worker each: what two hops cost any proxy "
        "on this machine (the baseline of chain-plain and chain-mtls)",
        hops=2,
    ),
    Scenario(
        "chain-floor", "python-floor", "two bare asyncio + httptools relays in a row",
        hops=2,
    ),
)


def _description(text: str) -> str:
    """The file's leading ``#`` comment lines, joined."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(part for part in lines if part) or "(no description)"


def load_extra(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    """Scenarios from ``directory/*.yaml``; a file that cannot be read still yields a
    scenario, whose templates then fail to render when it runs (reported, not raised)."""
    scenarios = []
    for path in sorted(directory.glob("*.yaml")):
        text = path.read_text()
        documents = tuple(
            doc for doc in _DOCUMENT_SEPARATOR.split(text)
            if any(line.strip() and not line.startswith("#") for line in doc.splitlines())
        )
        scenarios.append(
            Scenario(
                name=path.stem,
                kind="sidemesh",
                description=_description(text),
                templates=documents,
                source=str(path),
            )
        )
    return scenarios


def check_answers(url: str, timeout: float = 5.0) -> None:
    """One GET through the scenario: it must reach the upstream and return its body.

    Guards the figures: a proxy that answers 404 or 502 quickly would look very fast.
    """
    match = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    if match is None:
        raise BenchError(f"bad url {url}")
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=timeout)
        try:
            conn.request("GET", match.group(3) or "/")
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise BenchError(f"GET {url} failed: {exc}") from exc
            time.sleep(0.1)
            continue
        finally:
            conn.close()
        if response.status == 200 and body == RESPONSE_BODY:
            return
        raise BenchError(f"GET {url} answered {response.status}, not the upstream's body: "
                         f"{body.strip()[:200]!r}")


def _start_chain(
    scenario: Scenario, ctx: StartContext, running: Running,
    command: Callable[[str, int, int], list[str]],
) -> None:
    """``scenario.hops`` proxies in a row; ``command(name, port, upstream_port)`` is the
    argv of one. Started from the one nearest the upstream, so each one's upstream is up
    before its client."""
    upstream = ctx.upstream_port
    for hop in reversed(range(scenario.hops)):
        name = f"{scenario.name}-{hop}" if scenario.hops > 1 else f"{scenario.name}-proxy"
        port = free_port()
        process = ManagedProcess(name, command(name, port, upstream), ctx.work_dir,
                                 ctx.proxy_cpu)
        running.processes.append(process.start())
        wait_for_port("127.0.0.1", port, ctx.start_timeout, process)
        upstream = port
    running.url = f"http://127.0.0.1:{upstream}/"


def _start_nginx(scenario: Scenario, ctx: StartContext, running: Running) -> None:
    def command(name: str, port: int, upstream: int) -> list[str]:
        prefix = ctx.work_dir / name
        prefix.mkdir(exist_ok=True)  # again in the next round or load mode
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_proxy_config(prefix, port, upstream, scenario.workers))
        return [ctx.tools.nginx, "-p", str(prefix), "-c", str(conf),
                "-e", str(prefix / "error.log")]

    _start_chain(scenario, ctx, running, command)


def _start_haproxy(ctx: StartContext, running: Running) -> None:
    if ctx.tools.haproxy is None:
        raise BenchError("haproxy is not installed")
    port = free_port()
    conf = ctx.work_dir / "haproxy.cfg"
    conf.write_text(haproxy_config(port, ctx.upstream_port))
    process = ManagedProcess("haproxy", [ctx.tools.haproxy, "-db", "-f", str(conf)],
                             ctx.work_dir, ctx.proxy_cpu)
    running.processes.append(process.start())
    wait_for_port("127.0.0.1", port, ctx.start_timeout, process)
    running.url = f"http://127.0.0.1:{port}/"


def _start_python_floor(scenario: Scenario, ctx: StartContext, running: Running) -> None:
    script = Path(__file__).resolve().parent / "python_floor.py"

    def command(_: str, port: int, upstream: int) -> list[str]:
        return [sys.executable, str(script), str(port), str(upstream)]

    _start_chain(scenario, ctx, running, command)


def sidemesh_command() -> Path:
    """The ``sidemesh`` console script of the interpreter running the harness."""
    # Not resolved: a venv's python is a symlink and its scripts sit next to the link.
    script = Path(sys.executable).parent / "sidemesh"
    if not script.exists():
        raise BenchError(f"no sidemesh console script next to {sys.executable} "
                         "(install the project into that environment: pip install -e .)")
    return script


def _shared_values(scenario: Scenario, ctx: StartContext) -> dict[str, str]:
    """``{certs}``, ``{deadport}`` and ``{upstream_tls}``: the same for every sidecar of
    a chain, and only made when a template uses them (issuing certificates takes a
    moment)."""
    text = "".join(scenario.templates)
    values: dict[str, str] = {}
    if "{upstream_tls}" in text:
        if ctx.upstream_tls is None:
            raise BenchError(f"{scenario.source}: the upstream has no TLS port in this run")
        port, certs = ctx.upstream_tls
        values["upstream_tls"] = f"127.0.0.1:{port}"
        # The upstream presents b from these: a bundle from any other CA would refuse it.
        values["certs"] = str(certs)
    elif "{certs}" in text:
        directory = ctx.work_dir / f"{scenario.name}-certs"
        try:
            issue_certificates(directory)
        except (OSError, ValueError, CertificateAuthorityError) as exc:
            raise BenchError(f"{scenario.source}: cannot issue certificates: {exc}") from exc
        values["certs"] = str(directory)
    if "{deadport}" in text:
        # Bound and released at once: nothing listens there, connections are refused.
        values["deadport"] = str(free_port())
    return values


def _start_sidemesh(scenario: Scenario, ctx: StartContext, running: Running) -> None:
    if not scenario.templates:
        raise BenchError(f"{scenario.source} holds no sidecar config")
    if "{listen}" not in scenario.templates[0]:
        raise BenchError(f"{scenario.source}: the first sidecar must listen on {{listen}}")
    command = sidemesh_command()
    listens = [f"127.0.0.1:{free_port()}" for _ in scenario.templates]
    shared = _shared_values(scenario, ctx)
    # Start from the sidecar nearest the upstream so each {next} is up before its client.
    for index in reversed(range(len(scenario.templates))):
        values = {
            "upstream": f"127.0.0.1:{ctx.upstream_port}",
            "listen": listens[index],
            "admin": f"127.0.0.1:{free_port()}",
            **shared,
        }
        if index + 1 < len(listens):
            values["next"] = listens[index + 1]
        try:
            document = render_template(scenario.templates[index], values)
        except (ValueError, yaml.YAMLError) as exc:
            raise BenchError(f"{scenario.source}, sidecar {index}: {exc}") from exc
        config = ctx.work_dir / f"{scenario.name}-{index}.yaml"
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        argv = [str(command), "proxy", "-c", str(config), *ctx.sidemesh_args]
        if scenario.workers > 1:
            argv += ["--concurrency", str(scenario.workers)]
        process = ManagedProcess(f"{scenario.name}-{index}", argv, ctx.work_dir, ctx.proxy_cpu)
        running.processes.append(process.start())
        host, port = listens[index].rsplit(":", 1)
        wait_for_port(host, int(port), ctx.start_timeout, process)
    running.url = f"http://{listens[0]}/"


def start(scenario: Scenario, ctx: StartContext) -> Running:
    """Start what the scenario puts in front of the upstream and check that it proxies.

    Whatever was started is stopped again when this raises.
    """
    running = Running(f"http://127.0.0.1:{ctx.upstream_port}/")
    try:
        if scenario.kind == "nginx":
            _start_nginx(scenario, ctx, running)
        elif scenario.kind == "haproxy":
            _start_haproxy(ctx, running)
        elif scenario.kind == "python-floor":
            _start_python_floor(scenario, ctx, running)
        elif scenario.kind == "sidemesh":
            _start_sidemesh(scenario, ctx, running)
        try:
            check_answers(running.url)
        except BenchError as exc:
            logs = "; ".join(f"{p.name}: {p.log_tail(3)}" for p in running.processes)
            raise BenchError(f"{exc} [{logs}]" if logs else str(exc)) from exc
    except BaseException:
        running.stop()
        raise
    return running
