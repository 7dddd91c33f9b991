"""A W3C Trace Context test bed: a sidecar pair with a tracing-unaware app between them.

    caller ──► sidecar A ──► app ──► sidecar B ──► callback server
               (inbound)             (outbound)

The app is what the W3C harness calls a "test service" (w3c/trace-context, test/README.md):
for each ``{"url": ..., "arguments": ...}`` of the JSON list it is sent, it POSTs
``arguments`` to ``url``. It knows nothing of tracing: like any application in an Istio
mesh it copies the context headers of the request it serves onto the requests it makes
(Istio's "trace context propagation" duty) and sends them through its sidecar.

Run as a script, it serves the bed to the official harness and, given the harness's
directory, runs it (see the plugin's README)::

    .venv/bin/python plugins/tracing/tests/tracing_testbed.py \\
        --harness-dir /tmp/trace-context/test --python /tmp/w3c-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx

from sidemesh import testing

__all__ = ["PROPAGATED", "run_official_harness", "sidecar_pair"]

#: What Istio asks applications to copy from the request they serve to the ones they make.
PROPAGATED = frozenset({
    "x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
})
CALL_TIMEOUT = 10.0
JSON = {"content-type": "application/json"}


def _app(outbound: str) -> Callable[[testing.SeenRequest], Awaitable[testing.Reply]]:
    async def handle(seen: testing.SeenRequest) -> testing.Reply:
        try:
            actions = json.loads(seen.body or b"[]")
        except ValueError:
            return testing.Reply(400, b'"the body is not JSON"', JSON)
        context = {name: value for name, value in seen.headers.items() if name in PROPAGATED}
        async with httpx.AsyncClient(base_url=outbound, timeout=CALL_TIMEOUT) as client:
            for action in actions if isinstance(actions, list) else []:
                target = httpx.URL(action["url"])
                try:
                    await client.post(
                        target.raw_path.decode("ascii"),
                        json=action.get("arguments") or [],
                        headers={**context, "host": target.netloc.decode("ascii")},
                    )
                except httpx.HTTPError as exc:
                    return testing.Reply(502, json.dumps(str(exc)).encode(), JSON)
        return testing.Reply(200, b"{}", JSON)

    return handle


def _sidecar(service: str, upstream: str) -> dict[str, Any]:
    doc = testing.simple_config(upstream, listener_plugins=[{"name": "tracing", "config": {}}])
    doc["node"]["service"] = service
    return doc


@contextlib.contextmanager
def sidecar_pair(callback: str) -> Iterator[str]:
    """Start the bed (both sidecars run ``tracing`` with its defaults); ``callback`` is the
    host:port sidecar B sends the app's calls to. Yields the URL callers POST to (sidecar
    A's listener)."""
    with contextlib.ExitStack() as stack:
        outbound = stack.enter_context(testing.running_sidecar(_sidecar("sidecar-b", callback)))
        app = stack.enter_context(testing.Upstream(_app(outbound.url("main")), name="app"))
        inbound = stack.enter_context(testing.running_sidecar(_sidecar("sidecar-a", app.address)))
        yield inbound.url("main") + "/test"


def run_official_harness(
    harness_dir: str, python: str = sys.executable, patterns: Sequence[str] = (),
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run w3c/trace-context's ``test/test.py`` (spec level 2, strictness 2) against a
    fresh bed; its output and exit status (the count of failures and errors) come back."""
    port = testing.free_port()
    with sidecar_pair(f"127.0.0.1:{port}") as service:
        env = {**os.environ, "HARNESS_HOST": "127.0.0.1", "HARNESS_PORT": str(port),
               "SPEC_LEVEL": "2", "STRICT_LEVEL": "2"}
        return subprocess.run(
            [python, "test.py", service, *patterns], cwd=harness_dir, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--harness-dir", help="w3c/trace-context's test/ directory; "
                        "without it, serve the bed until interrupted")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that runs the harness (it needs aiohttp)")
    parser.add_argument("--harness-port", type=int, default=7777,
                        help="the harness's port, when serving the bed (default 7777)")
    parser.add_argument("patterns", nargs="*", help="test names passed on to the harness")
    args = parser.parse_args(argv)
    if args.harness_dir:
        result = run_official_harness(args.harness_dir, args.python, args.patterns)
        print(result.stdout)
        return result.returncode
    with sidecar_pair(f"127.0.0.1:{args.harness_port}") as service:
        print(f"SERVICE_ENDPOINT={service} (harness expected on port {args.harness_port});"
              " Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
