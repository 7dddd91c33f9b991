"""Generated configs of the HTTP/2 scenarios: the upstream, nginx as an HTTP/2 proxy,
and sidemesh with an HTTP/2 or HTTP/1.1 cluster.

nginx 1.22 serves h2c with prior knowledge on ``listen ... http2`` (and then only h2c on
that port), so every nginx here listens twice when it must speak both versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from bench.configs import nginx_proxy_config, nginx_upstream_config, sidemesh_config

__all__ = ["nginx_h2_proxy_config", "nginx_h2_upstream_config", "sidemesh_h2_config"]

UpstreamProtocol = Literal["h1", "h2"]


def _listen(port: int) -> str:
    return f"listen 127.0.0.1:{port} backlog=4096;\n"


def _add_h2_listen(config: str, port: int, h2_port: int) -> str:
    """The same server block, also listening for h2c on ``h2_port``."""
    anchor = _listen(port)
    if anchor not in config:
        raise ValueError(f"no {anchor.strip()!r} in the nginx config to add h2c next to")
    return config.replace(
        anchor, anchor + f"    listen 127.0.0.1:{h2_port} http2 backlog=4096;\n", 1)


def nginx_h2_upstream_config(prefix: Path, port: int, h2_port: int) -> str:
    """The HTTP/1.1 benchmark upstream (same body, same settings) also serving h2c on
    ``h2_port``; ``keepalive_requests`` bounds requests per HTTP/2 connection too."""
    return _add_h2_listen(nginx_upstream_config(prefix, port), port, h2_port)


def nginx_h2_proxy_config(
    prefix: Path, h2_port: int, upstream_port: int, upstream: UpstreamProtocol,
    h1_port: int,
) -> str:
    """nginx taking h2c on ``h2_port`` (and HTTP/1.1 on ``h1_port``, same location).

    To an ``h1`` upstream it is the HTTP/1.1 reverse proxy of the main table
    (``proxy_pass``, keep-alive pool: nginx cannot proxy_pass over HTTP/2). To an ``h2``
    upstream it uses ``grpc_pass grpc://``, nginx's only HTTP/2 upstream module, which
    carries any request (not only gRPC) as an HTTP/2 stream, one stream per upstream
    connection at a time, connections kept alive (``keepalive 128``).
    """
    config = _add_h2_listen(nginx_proxy_config(prefix, h1_port, upstream_port), h1_port,
                            h2_port)
    if upstream == "h1":
        return config
    proxy = ("      proxy_pass http://backend;\n      proxy_http_version 1.1;\n"
             '      proxy_set_header Connection "";\n')
    if proxy not in config:
        raise ValueError("the nginx proxy config has no proxy_pass block to replace")
    return config.replace(proxy, "      grpc_pass grpc://backend;\n", 1)


def sidemesh_h2_config(
    listen: str, admin: str, upstream: str, protocol: UpstreamProtocol
) -> dict[str, Any]:
    """The plain ``sidemesh`` scenario's config (whose listener takes HTTP/1.1 and h2c on
    one port), its cluster speaking HTTP/2 (``protocol: http2``) or HTTP/1.1 upstream."""
    document = sidemesh_config(listen, admin, upstream)
    if protocol == "h2":
        document["clusters"][0]["protocol"] = "http2"
    return document
