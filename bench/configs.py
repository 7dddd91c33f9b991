"""Generated configs: the upstream nginx, the reference proxies, and sidemesh.

Each reference proxy is set up the way one would for a fair fight with a sidecar:
one worker/thread, keep-alive to the client and to the upstream, no access log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PLACEHOLDERS",
    "RESPONSE_BODY",
    "haproxy_config",
    "nginx_proxy_config",
    "nginx_upstream_config",
    "render_template",
    "sidemesh_config",
]

#: ~100 bytes, like a small JSON API answer; the figure in DESIGN.md used this size.
RESPONSE_BODY = '{"service":"upstream","status":"ok","payload":"' + "x" * 50 + '"}\n'

#: the tokens a scenario template may use, replaced literally (not ``str.format``, so
#: YAML flow mappings like ``{name: retry}`` need no escaping).
PLACEHOLDERS = (
    "{upstream}", "{upstream_tls}", "{listen}", "{admin}", "{next}", "{certs}", "{deadport}",
)


def _nginx_common(prefix: Path, workers: int = 1) -> str:
    # As root the master would hand workers to "nobody", who cannot write the 0700 prefix.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        f"worker_processes {workers};\n"
        "daemon off;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    )


def _nginx_http_common(prefix: Path) -> str:
    return (
        "  access_log off;\n"
        "  keepalive_timeout 75s;\n"
        "  keepalive_requests 1000000;\n"
        f"  client_body_temp_path {prefix}/client_body;\n"
        f"  proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fastcgi;\n"
        f"  uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
    )


def nginx_upstream_config(
    prefix: Path, port: int, tls: tuple[int, Path] | None = None
) -> str:
    """The real upstream: a fixed ~100-byte body from memory, keep-alive on.

    With ``tls`` (a port and a ``{certs}`` directory) a second server answers the same
    over TLS there, presenting the SPIFFE certificate ``b``, for a sidecar route that
    originates mTLS to the upstream itself.
    """
    body = RESPONSE_BODY.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    answer = (
        "    location / {\n      default_type application/json;\n"
        + f'      return 200 "{body}";\n    }}\n  }}\n'
    )
    servers = f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n" + answer
    if tls is not None:
        tls_port, certs = tls
        # nginx < 1.23.4 leaves TLS 1.3 out by default: these are the later defaults,
        # so the sidecar gets TLS 1.3; the session cache stays nginx's default.
        # optional_no_ca asks for the sidecar's certificate, as a mesh peer would, but
        # does not verify it: the route's mtls checking the upstream's identity is
        # what is measured, not nginx authorising its client.
        servers += (
            f"  server {{\n    listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
            f"    ssl_certificate {certs / 'b.crt'};\n"
            f"    ssl_certificate_key {certs / 'b.key'};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_verify_client optional_no_ca;\n"
            + answer
        )
    return _nginx_common(prefix) + "http {\n" + _nginx_http_common(prefix) + servers + "}\n"


def nginx_proxy_config(prefix: Path, port: int, upstream_port: int, workers: int = 1) -> str:
    """nginx as a reverse proxy with a keep-alive pool to the upstream."""
    return (
        _nginx_common(prefix, workers)
        + "http {\n"
        + _nginx_http_common(prefix)
        + f"  upstream backend {{\n    server 127.0.0.1:{upstream_port};\n"
        + "    keepalive 128;\n    keepalive_requests 1000000;\n  }\n"
        + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        + "    location / {\n      proxy_pass http://backend;\n"
        + "      proxy_http_version 1.1;\n"
        + '      proxy_set_header Connection "";\n    }\n  }\n}\n'
    )


def haproxy_config(port: int, upstream_port: int) -> str:
    """HAProxy in HTTP mode, one thread, connection reuse to the upstream."""
    return (
        "global\n  nbthread 1\n  maxconn 4096\n\n"
        "defaults\n  mode http\n  option http-keep-alive\n"
        "  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n"
        f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\n"
        "backend be\n  http-reuse always\n"
        f"  server upstream 127.0.0.1:{upstream_port} maxconn 1000\n"
    )


def sidemesh_config(listen: str, admin: str, upstream: str) -> dict[str, Any]:
    """The plain ``sidemesh`` scenario: one listener, one ``/`` route, no plugins."""
    return {
        "node": {"service": "bench", "namespace": "default"},
        "admin": admin,
        "clusters": [{"name": "upstream", "endpoints": [{"address": upstream}]}],
        "listeners": [
            {
                "name": "bench",
                "address": listen,
                "routes": [{"name": "all", "match": {"prefix": "/"}, "cluster": "upstream"}],
            }
        ],
    }


def render_template(template: str, values: dict[str, str]) -> dict[str, Any]:
    """Substitute the placeholders in one sidecar template and parse the YAML.

    :raises ValueError: when the result is not a YAML mapping or a placeholder the
        template uses has no value (e.g. ``{next}`` in the last sidecar of a chain).
    """
    text = template
    for token in PLACEHOLDERS:
        if token in text:
            key = token.strip("{}")
            if key not in values:
                raise ValueError(f"placeholder {token} has no value here")
            text = text.replace(token, values[key])
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("a sidecar template must be a YAML mapping")
    return document
