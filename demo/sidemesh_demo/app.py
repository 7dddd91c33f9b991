"""The small services of ``sidemesh demo``: ``reviews`` and ``productpage`` (Istio's
bookinfo, shrunk), and a Zipkin-compatible span receiver (``ratings``, the gRPC one, is
in :mod:`sidemesh_demo.ratings`).

    python -m sidemesh_demo.app reviews --version v1 --name reviews-v1-a --port 9081
    python -m sidemesh_demo.app productpage --port 9080 --reviews http://127.0.0.1:15001 \
        --ratings 127.0.0.1:15001

``reviews`` answers JSON with its version. ``POST /fault?status=503`` makes it answer
that status until ``DELETE /fault`` (the demo's way to break one endpoint on purpose).
``productpage`` calls reviews through its sidecar's outbound listener and forwards the
trace headers it received, as an instrumented app would, so the trace is one tree.
``GET /productpage?ratings=1`` also calls ``bookinfo.Ratings/Get`` over gRPC through the
same outbound listener (the trace headers as gRPC metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

__all__ = ["PRODUCTPAGE_PATH", "REVIEWS_PATH", "ZipkinReceiver", "main", "productpage_app",
           "reviews_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PRODUCTPAGE_PATH = "/productpage"
REVIEWS_PATH = "/reviews/1"
#: What an instrumented app copies from its inbound request to its outbound calls.
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled", "x-request-id")


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def reviews_app(version: str, name: str) -> App:
    fault: dict[str, int | None] = {"status": None}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        path, method = scope["path"], scope["method"]
        if path == "/fault":
            if method == "POST":
                query = parse_qs(scope.get("query_string", b"").decode())
                fault["status"] = int(query.get("status", ["503"])[0])
            elif method == "DELETE":
                fault["status"] = None
            await _answer(send, 200, {"instance": name, "fault": fault["status"]})
            return
        if fault["status"] is not None:
            await _answer(send, fault["status"], {"error": "fault injected by the demo",
                                                  "instance": name})
            return
        if not path.startswith("/reviews"):
            await _answer(send, 404, {"error": f"no {path} here"})
            return
        stars = {"v1": None, "v2": "black"}.get(version, "red")
        await _answer(send, 200, {"service": "reviews", "version": version, "instance": name,
                                  "reviews": [{"reviewer": "Reviewer1", "stars": stars}]})

    return app


def productpage_app(reviews_url: str, ratings_target: str) -> App:
    import httpx

    from .ratings import get_rating

    state: dict[str, httpx.AsyncClient] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        if scope["path"] == "/healthz":
            await _answer(send, 200, {"ok": True})
            return
        if scope["path"] != PRODUCTPAGE_PATH:
            await _answer(send, 404, {"error": f"no {scope['path']} here"})
            return
        client = state.get("client")
        if client is None:
            # Host names the destination: the sidecar's outbound route matches on it.
            client = state["client"] = httpx.AsyncClient(
                base_url=reviews_url, headers={"host": "reviews"}, timeout=10.0)
        incoming = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        forwarded = {k: incoming[k] for k in TRACE_HEADERS if k in incoming}
        try:
            response = await client.get(REVIEWS_PATH, headers=forwarded)
        except httpx.HTTPError as exc:
            await _answer(send, 502, {"product": "demo", "reviews_error": str(exc)})
            return
        try:
            reviews = response.json()
        except ValueError:
            reviews = {"body": response.text[:200]}
        status = 200 if response.status_code < 500 else response.status_code
        page: dict[str, Any] = {"product": "demo", "reviews_status": response.status_code,
                                "reviews": reviews}
        if parse_qs(scope.get("query_string", b"").decode()).get("ratings") == ["1"]:
            # grpcio's blocking client, off the event loop: one call, no channel to keep.
            rating = await asyncio.to_thread(get_rating, ratings_target, "1",
                                             list(forwarded.items()))
            page.update(ratings_grpc_status=rating.code, ratings=rating.answer)
            if rating.code != 0:
                status = 502
        await _answer(send, status, page)

    return app


class ZipkinReceiver:
    """A Zipkin v2 collector that keeps spans in memory: ``POST /api/v2/spans`` stores,
    ``GET /api/v2/spans`` and ``GET /api/v2/trace/{id}`` read them back."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    spans = json.loads(self.rfile.read(length) or b"[]")
                except ValueError:
                    self._reply(400, {"error": "not JSON"})
                    return
                if self.path.split("?")[0] != "/api/v2/spans" or not isinstance(spans, list):
                    self._reply(400, {"error": "POST a JSON list to /api/v2/spans"})
                    return
                with receiver.lock:
                    receiver.spans.extend(s for s in spans if isinstance(s, dict))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/api/v2/spans":
                    self._reply(200, receiver.snapshot())
                elif path.startswith("/api/v2/trace/"):
                    trace = path.rsplit("/", 1)[1]
                    self._reply(200, [s for s in receiver.snapshot() if s.get("traceId") == trace])
                else:
                    self._reply(404, {"error": "try /api/v2/spans or /api/v2/trace/{id}"})

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)

    def __enter__(self) -> ZipkinReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidemesh_demo.app",
                                     description="The demo's small services.")
    parser.add_argument("service", choices=["reviews", "productpage"])
    parser.add_argument("--version", default="v1", help="reviews: the version it reports")
    parser.add_argument("--name", default="", help="reviews: the instance name it reports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reviews", default="", help="productpage: the outbound listener URL")
    parser.add_argument("--ratings", default="",
                        help="productpage: the outbound listener as a gRPC target (host:port)")
    args = parser.parse_args(argv)
    if args.service == "productpage" and not (args.reviews and args.ratings):
        parser.error("productpage needs --reviews URL and --ratings HOST:PORT (its sidecar's "
                     "outbound listener)")
    import uvicorn

    app = (reviews_app(args.version, args.name or f"reviews-{args.version}")
           if args.service == "reviews" else productpage_app(args.reviews, args.ratings))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                lifespan="off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
