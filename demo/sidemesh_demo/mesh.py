"""``sidemesh demo``: the whole mesh on this machine (SPEC section 7).

A control plane, productpage calling reviews (two v1 pods and one v2 pod) and, once,
ratings over gRPC, a sidecar in front of each app taking its config from the control
plane, mTLS between them with certificates from the control plane's CA, tracing to an
in-demo Zipkin receiver. It pushes a traffic policy, sends traffic, breaks one reviews
pod, heals it, scales reviews 3 → 4 → 3 (productpage's sidecar finds the pods by service
discovery), and reports what the sidecars themselves measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from .app import PRODUCTPAGE_PATH, ZipkinReceiver
from .config import Instance, Layout, productpage_config, ratings_config, reviews_config
from .evidence import Evidence, collect
from .procs import Child, DemoError, Supervisor, Terminated, raise_on_sigterm
from .ratings import GET_METHOD, ready
from .report import render
from .scale import Scaler, Scaling
from .traffic import ClusterWatcher, Phase, drive

__all__ = ["REQUIRED_PLUGINS", "main"]

REQUIRED_PLUGINS = ("retry", "circuit", "split", "mtls", "tracing")
#: How long one reviews pod answers 503: past its first ejection (CIRCUIT's 3s).
FAULT_SECONDS = 4.0


def _preflight() -> None:
    """The plugins the demo's configs use, asked of ``sidemesh plugins`` as a user would:
    the demo knows the core by its command line only."""
    command = [sys.executable, "-m", "sidemesh", "plugins", "--json"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DemoError("sidemesh plugins --json: no answer after 60s") from None
    # Its exit 1 only says some plugin failed to load, maybe one the demo does not use.
    try:
        listing = json.loads(done.stdout)
        found = {p["name"] for p in listing["plugins"]}
        broken = {e["name"]: e["error"] for e in listing["load_errors"]}
    except (ValueError, KeyError, TypeError):
        raise DemoError("sidemesh plugins --json failed: "
                        + (done.stderr or done.stdout).decode(errors="replace")[-800:]) from None
    missing = [name for name in REQUIRED_PLUGINS if name not in found]
    if missing:
        details = "; ".join(f"{n}: {broken[n]}" for n in missing if n in broken)
        raise DemoError(
            f"the demo needs the plugins {', '.join(REQUIRED_PLUGINS)}; missing: "
            f"{', '.join(missing)}" + (f" (failed to load: {details})" if details else "")
            + ". Install them: pip install 'sidemesh[all]' (or pip install -e plugins/NAME "
            "in a checkout).")


class Mesh:
    """The running demo mesh: processes, addresses and the control API."""

    def __init__(self, console: Console, workdir: Path, zipkin: ZipkinReceiver) -> None:
        self.console = console
        self.workdir = workdir
        self.zipkin = zipkin
        self.sup = Supervisor(workdir)
        self.layout = Layout()
        self.data = workdir / "control"
        self.admin_token = ""
        self.tokens: dict[str, Path] = {}
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:5.1f}s[/dim]  {text}")

    # control plane ------------------------------------------------------------------
    def start_control(self) -> None:
        layout = self.layout
        child = self.sup.start("control", ["-m", "sidemesh", "control", "--data", str(self.data),
                                           "--listen", f"127.0.0.1:{layout.control_port}"])
        self.sup.wait_http(child, f"{layout.control_url}/v1/schemas", ok=range(200, 500))
        token_file = self.data / "admin.token"
        if not token_file.exists():
            raise DemoError(f"the control plane did not create {token_file}:\n{child.output()}")
        self.admin_token = token_file.read_text().strip()
        self.say(f"control plane up on {layout.control_url} (CA, config store)")

    def put_config(self, service: str, doc: dict[str, Any]) -> int:
        url = f"{self.layout.control_url}/v1/services/{service}/config"
        try:
            response = httpx.put(url, json=doc, timeout=10.0,
                                 headers={"authorization": f"Bearer {self.admin_token}"})
        except httpx.HTTPError as exc:
            raise DemoError(f"PUT {url}: {exc}") from None
        if response.status_code != 200:
            raise DemoError(f"the control plane refused {service}'s config: PUT {url} -> "
                            f"{response.status_code} {response.text[:1500]}")
        try:
            return int(response.json()["version"])
        except (ValueError, KeyError, TypeError):
            raise DemoError(f"PUT {url}: unexpected answer {response.text[:300]}") from None

    def issue_tokens(self, names: list[tuple[str, str]]) -> dict[str, Path]:
        """One token per sidecar (``sidemesh token``), issued concurrently."""

        def issue(item: tuple[str, str]) -> tuple[str, Path]:
            name, service = item
            token = self.sup.run(f"sidemesh token --service {service}",
                                 ["-m", "sidemesh", "token", "--data", str(self.data),
                                  "--service", service])
            path = self.workdir / "tokens" / f"{name}.token"
            path.parent.mkdir(exist_ok=True, mode=0o700)
            path.write_text(token + "\n")
            path.chmod(0o600)
            return name, path

        with ThreadPoolExecutor(4) as pool:
            return dict(pool.map(issue, names))

    def proxies(self) -> list[dict[str, Any]]:
        try:
            response = httpx.get(f"{self.layout.control_url}/v1/proxies", timeout=5.0,
                                 headers={"authorization": f"Bearer {self.admin_token}"})
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return []
        found = body.get("proxies", body) if isinstance(body, dict) else body
        return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []

    # workloads ----------------------------------------------------------------------
    def start_workloads(self) -> None:
        layout = self.layout
        zipkin = self.zipkin.url
        self.put_config("reviews", reviews_config(layout, zipkin))
        self.put_config("ratings", ratings_config(layout, zipkin))
        version = self.put_config("productpage", productpage_config(layout, zipkin, False))
        self.say(f"configs stored: reviews, ratings, productpage v{version} (mTLS, tracing)")
        pods = [*layout.instances, layout.extra]
        ratings = layout.ratings
        self.tokens = self.issue_tokens([("productpage", "productpage"),
                                         (ratings.name, "ratings")]
                                        + [(i.name, "reviews") for i in pods])
        self.say(f"{len(self.tokens)} sidecar tokens issued (sidemesh token)")
        apps = [(self.sup.start("app-productpage", [
            "-m", "sidemesh_demo.app", "productpage", "--port", str(layout.pp_app),
            "--reviews", f"http://127.0.0.1:{layout.pp_outbound}",
            "--ratings", layout.pp_outbound_target]),
            f"http://127.0.0.1:{layout.pp_app}/healthz")]
        ratings_app = self.sup.start(f"app-{ratings.name}", [
            "-m", "sidemesh_demo.ratings", "--host", ratings.host,
            "--port", str(layout.ratings_app)])
        sidecars = [(self.sidecar("productpage", "productpage", self.tokens["productpage"],
                                  None), f"{layout.pp_admin_url}/ready"),
                    (self.sidecar(ratings.name, "ratings", self.tokens[ratings.name], ratings),
                     f"{layout.ratings_admin_url}/ready")]
        for inst in layout.instances:
            app, sidecar = self.start_pod(inst, wait=False)
            apps.append((app, f"{layout.app_url(inst)}/reviews/1"))
            sidecars.append((sidecar, f"{layout.admin_url(inst)}/ready"))
        for child, url in apps:
            self.sup.wait_http(child, url, ok=range(200, 500))
        self.sup.wait_until(ratings_app, lambda: ready(layout.ratings_target),
                            f"no gRPC server at {layout.ratings_target}")
        self.say("apps up: productpage, " + ", ".join(
            f"{i.name} ({i.host})" for i in [*layout.instances, ratings]) + " (gRPC)")
        for child, url in sidecars:
            self.sup.wait_http(child, url, timeout=30.0)
        self.say(f"{len(sidecars)} sidecars ready, configs from the control plane applied")
        self.wait_endpoints("reviews", {layout.endpoint(i) for i in layout.instances})
        self.wait_endpoints("ratings", {layout.ratings_endpoint})
        self.say("reviews and ratings sidecars registered; productpage's sidecar got their "
                 "4 addresses pushed (service: reviews, service: ratings)")

    def start_pod(self, inst: Instance, wait: bool = True) -> tuple[Child, Child]:
        """A reviews pod: its app and its sidecar; ``wait``: until both are ready."""
        layout = self.layout
        app = self.sup.start(f"app-{inst.name}", [
            "-m", "sidemesh_demo.app", "reviews", "--version", inst.version,
            "--name", inst.name, "--host", inst.host, "--port", str(layout.reviews_app)])
        sidecar = self.sidecar(inst.name, "reviews", self.tokens[inst.name], inst)
        if wait:
            self.sup.wait_http(app, f"{layout.app_url(inst)}/reviews/1", ok=range(200, 500))
            self.sup.wait_http(sidecar, f"{layout.admin_url(inst)}/ready", timeout=30.0)
        return app, sidecar

    def wait_endpoints(self, cluster: str, expected: set[str], timeout: float = 20.0) -> None:
        """Until productpage's sidecar lists exactly ``expected`` in ``cluster``."""
        url = f"{self.layout.pp_admin_url}/clusters"
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            self.sup.check_alive()
            try:
                clusters = httpx.get(url, timeout=2.0).json().get("clusters", [])
                seen = {e.get("address") for c in clusters if c.get("name") == cluster
                        for e in c.get("endpoints", [])}
            except (httpx.HTTPError, ValueError, AttributeError):
                seen = set()
            if seen == expected:
                return
            time.sleep(0.1)
        raise DemoError(f"productpage's sidecar lists {cluster} endpoints {sorted(seen)} after "
                        f"{timeout:.0f}s, not the registered pods {sorted(expected)}")

    def sidecar(self, name: str, service: str, token: Path, inst: Instance | None) -> Any:
        args = ["-m", "sidemesh", "proxy", "--control", self.layout.control_url,
                "--service", service, "--token-file", str(token), "--proxy-id", name,
                "--state-dir", str(self.workdir / "state" / name), "--drain-timeout", "2s",
                "--access-log", str(self.access_log(name))]
        if inst is not None:
            # Its registered address is its inbound listener's, on the pod's address.
            args += ["--bind-host", inst.host, "--label", f"version={inst.version}",
                     "--label", f"instance={inst.name}"]
        return self.sup.start(f"sidecar-{name}", args)

    def access_log(self, name: str) -> Path:
        return self.sup.logs / f"access-{name}.jsonl"

    def fault(self, inst: Instance, status: int | None) -> None:
        url = f"{self.layout.app_url(inst)}/fault"
        try:
            if status is None:
                httpx.delete(url, timeout=5.0).raise_for_status()
            else:
                httpx.post(url, params={"status": status}, timeout=5.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise DemoError(f"cannot reach {inst.name}'s fault switch {url}: {exc}") from None

    def wait_applied(self, version: int, timeout: float = 15.0) -> None:
        url = f"{self.layout.pp_admin_url}/config_dump"
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            self.sup.check_alive()
            try:
                seen = httpx.get(url, timeout=2.0).json().get("version")
            except (httpx.HTTPError, ValueError):
                seen = None
            if str(seen) == str(version):
                return
            time.sleep(0.1)
        raise DemoError(f"productpage's sidecar did not apply config v{version} within "
                        f"{timeout:.0f}s (it runs {seen}):\n"
                        f"{self.sup.output_of('sidecar-productpage')}")


def grpc_call(mesh: Mesh, url: str) -> None:
    """One page for which productpage also calls ratings over gRPC, through its sidecar
    and the ratings sidecar (what the report shows of it, it reads from the mesh)."""
    try:
        response = httpx.get(url, timeout=10.0)
        code = response.json().get("ratings_grpc_status")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise DemoError(f"GET {url}: {exc}") from None
    if response.status_code != 200 or code != 0:
        raise DemoError(f"productpage's gRPC call {GET_METHOD} failed: GET {url} -> "
                        f"{response.status_code} {response.text[:400]}\nproductpage sidecar "
                        f"log:\n{mesh.sup.output_of('sidecar-productpage')}")
    mesh.say(f"productpage called ratings once over gRPC ({GET_METHOD}): grpc-status {code}")


def _scenario(mesh: Mesh) -> Evidence:
    layout = mesh.layout
    mesh.start_control()
    mesh.start_workloads()
    url = f"{layout.entry_url}{PRODUCTPAGE_PATH}"
    alive = mesh.sup.check_alive
    check = drive(mesh.console, url, Phase("mTLS smoke test"), requests=12, check=alive)
    if check.statuses.get(200, 0) == 0:
        raise DemoError(f"no request made it through the mesh ({check.summary()}); "
                        f"productpage sidecar log:\n{mesh.sup.output_of('sidecar-productpage')}")
    grpc_call(mesh, f"{url}?ratings=1")
    version = mesh.put_config("productpage", productpage_config(layout, mesh.zipkin.url, True))
    mesh.say(f"pushed productpage v{version}: split 90/10 v1/v2, retries, outlier detection")
    mesh.wait_applied(version)
    mesh.say(f"productpage's sidecar applied v{version}")
    broken = layout.instances[0]
    with ClusterWatcher(layout.pp_admin_url, "reviews", mesh.t0) as watcher:
        drive(mesh.console, url, Phase("steady traffic"), requests=300, check=alive)
        mesh.fault(broken, 503)
        mesh.say(f"[bold red]broke {broken.name}[/bold red] ({layout.endpoint(broken)}): "
                 "its app now answers 503")
        # Longer than one ejection: it comes back still broken and is ejected again,
        # for longer (base_ejection_time x ejection count).
        drive(mesh.console, url, Phase(f"{broken.name} failing"), limit=FAULT_SECONDS,
              check=alive)
        mesh.fault(broken, None)
        mesh.say(f"[bold green]healed {broken.name}[/bold green]; waiting for the mesh to "
                 "let it back in")
        address = layout.endpoint(broken)

        def back() -> bool:
            mine = [e for e in watcher.events if e.address == address]
            return bool(mine) and all(e.returned_at is not None for e in mine)

        drive(mesh.console, url, Phase("waiting for its return"), until=back, limit=15.0,
              check=alive)
        drive(mesh.console, url, Phase("back in rotation"), requests=100, check=alive)
        scaling = Scaling(layout.extra, layout.endpoint(layout.extra))
        scaler = Scaler(mesh.sup, watcher, scaling, lambda: mesh.start_pod(layout.extra),
                        mesh.access_log(layout.extra.name), mesh.say, mesh.t0)
        scaler.start()

        def checks() -> None:
            alive()
            scaler.check()

        scaling.traffic = drive(mesh.console, url, Phase("reviews scaling 3 → 4 → 3"),
                                until=scaler.done.is_set, limit=60.0, check=checks)
        scaler.join(15)
        scaler.check()
        mesh.sup.check_alive()
    return collect(mesh.layout, mesh.zipkin, watcher, mesh.access_log, mesh.proxies(),
                   mesh.t0, version, broken, scaling)


def _keep_running(mesh: Mesh) -> None:
    layout = mesh.layout
    lines = [f"control plane   {layout.control_url}  (admin token: {mesh.data}/admin.token)",
             f"productpage     {layout.entry_url}{PRODUCTPAGE_PATH}",
             f"zipkin spans    {mesh.zipkin.url}/api/v2/spans",
             f"productpage sidecar admin  {layout.pp_admin_url}/clusters"]
    lines += [f"{i.name} sidecar admin  {layout.admin_url(i)}/metrics"
              for i in layout.instances]
    lines.append(f"{layout.ratings.name} sidecar admin  {layout.ratings_admin_url}/metrics")
    lines.append(f"logs            {mesh.sup.logs}")
    mesh.console.print("\n[bold]The mesh is still up[/bold] (Ctrl-C stops it):\n  "
                       + "\n  ".join(lines), highlight=False)
    while True:
        mesh.sup.check_alive()
        time.sleep(1.0)


def main(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    console = Console(highlight=False, width=None if tty else 110)
    raise_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="sidemesh-demo-"))
    mesh: Mesh | None = None
    code = 0
    try:
        _preflight()
        with ZipkinReceiver() as zipkin:
            mesh = Mesh(console, workdir, zipkin)
            try:
                evidence = _scenario(mesh)
                console.print(render(evidence))
                problems = evidence.problems()
                if problems:
                    raise DemoError("the mesh did not do what the demo shows:\n  - "
                                    + "\n  - ".join(problems))
                if getattr(args, "keep_running", False):
                    _keep_running(mesh)
            finally:
                mesh.sup.stop_all()
    except DemoError as exc:
        console.print(f"[bold red]sidemesh demo failed:[/bold red] {escape(str(exc))}")
        code = 1
    except KeyboardInterrupt:
        console.print("sidemesh demo: interrupted, everything it started is stopped")
        code = 130
    except Terminated:
        console.print("sidemesh demo: terminated, everything it started is stopped")
        code = 128 + signal.SIGTERM
    finally:
        if code == 1 and mesh is not None:
            # What went wrong is in the processes' logs: keep them, drop the secrets.
            shutil.rmtree(workdir / "tokens", ignore_errors=True)
            (workdir / "control" / "admin.token").unlink(missing_ok=True)
            console.print(f"logs of every process kept in {mesh.sup.logs}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if code == 0:
        console.print(f"sidemesh demo: done in {time.monotonic() - mesh.t0:.0f}s, "
                      "every process it started is stopped" if mesh else "")
    return code
