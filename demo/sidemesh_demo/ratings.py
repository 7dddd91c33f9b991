"""bookinfo's ratings as a gRPC service, and the call productpage makes to it.

    python -m sidemesh_demo.ratings --host 127.0.0.1 --port 9083

The service ``bookinfo.Ratings`` has one unary method, ``Get``: the request is a product
id, the answer a JSON object. Both are raw bytes through grpcio's generic handlers (no
``.proto``, no code generation): the mesh carries gRPC frames without reading them, so
a protobuf schema would add nothing to what the demo shows.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any

import grpc  # type: ignore[import-untyped]

__all__ = ["GET_METHOD", "SERVICE", "Rating", "get_rating", "main", "ready"]

SERVICE = "bookinfo.Ratings"
#: the HTTP/2 path of ``Get``, what the sidecars route and log.
GET_METHOD = f"/{SERVICE}/Get"
#: the ``:authority`` productpage sends: its sidecar's outbound route matches on it.
AUTHORITY = "ratings"
STARS = {"Reviewer1": 5, "Reviewer2": 4}


def _channel_options() -> list[tuple[str, Any]]:
    # grpcio would honour http_proxy from the environment; the sidecar is the only proxy.
    return [("grpc.default_authority", AUTHORITY), ("grpc.enable_http_proxy", 0)]


def _get(request: bytes, context: Any) -> bytes:
    return json.dumps({"product": request.decode(errors="replace"),
                       "ratings": STARS}).encode()


def ready(target: str, timeout: float = 1.0) -> bool:
    """Does a gRPC server answer the HTTP/2 handshake at ``target`` (``host:port``)?"""
    with grpc.insecure_channel(target, options=_channel_options()) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
    return True


@dataclass(frozen=True)
class Rating:
    """What one ``Get`` call ended with: its gRPC status code (0 is OK) and answer."""

    code: int
    answer: dict[str, Any]


def get_rating(target: str, product: str, metadata: Sequence[tuple[str, str]],
               timeout: float = 5.0) -> Rating:
    """Call ``bookinfo.Ratings/Get`` through ``target``, a sidecar's outbound listener
    (h2c with prior knowledge, as gRPC clients speak to a local proxy)."""
    with grpc.insecure_channel(target, options=_channel_options()) as channel:
        call = channel.unary_unary(GET_METHOD)
        try:
            answer = call(product.encode(), metadata=tuple(metadata), timeout=timeout)
        except grpc.RpcError as exc:
            return Rating(int(exc.code().value[0]), {"error": exc.details()})
    try:
        decoded = json.loads(answer)
    except ValueError:
        decoded = {"body": answer[:200].decode(errors="replace")}
    return Rating(0, decoded if isinstance(decoded, dict) else {"body": decoded})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidemesh_demo.ratings",
                                     description="bookinfo.Ratings over gRPC (h2c).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(_get)}),))
    server.add_insecure_port(f"{args.host}:{args.port}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stop.wait()
    server.stop(grace=1.0).wait(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
