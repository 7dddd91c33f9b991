"""The operator's commands, with istioctl's and linkerd's habits: ``proxy-status``,
``proxy-config``, ``config push|get|history|rollback``, ``version`` and ``completion``.

Registering imports only argparse: a command's code (and httpx) loads when it runs."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from sidemesh.api.durations import duration_argument

__all__ = ["DEFAULT_ADMIN_URL", "DEFAULT_STALE_AFTER", "register"]

FORMATTER = argparse.RawDescriptionHelpFormatter
DEFAULT_ADMIN_URL = "http://127.0.0.1:15000"
#: A live proxy polls at least every 25 s and the control plane rewrites its last-seen
#: time at most once a minute, so it is never more than 85 s old: twice the minute
#: leaves room for a slow poll before a proxy is called stale.
DEFAULT_STALE_AFTER = 120.0


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        handler = getattr(importlib.import_module(f"sidemesh.tools.ops.{module}"), function)
        return int(handler(args))

    return run


def _control(p: argparse.ArgumentParser, token: bool = True) -> None:
    p.add_argument("--control", metavar="URL[,URL...]",
                   help="the control plane (default: $SIDEMESH_CONTROL, else "
                   "http://127.0.0.1:15010); several replicas separated by commas, the next "
                   "tried when one does not answer")
    p.add_argument("--control-ca", metavar="FILE", help="with an https:// --control: the CA "
                   "bundle its certificate must chain to (sidemesh control --print-ca)")
    if token:
        p.add_argument("--admin-token-file", metavar="FILE",
                       help="the admin token (default: $SIDEMESH_ADMIN_TOKEN_FILE, else the "
                       "token in $SIDEMESH_ADMIN_TOKEN, else ./sidemesh-data/admin.token)")


def _admin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", metavar="URL", help="the sidecar's admin API (default: "
                   f"$SIDEMESH_ADMIN, else {DEFAULT_ADMIN_URL})")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _proxy_status(sub: Any) -> None:
    p = sub.add_parser(
        "proxy-status", help="every proxy: ACK/NACK, versions, whether it is synced and seen",
        formatter_class=FORMATTER,
        description="Every proxy the control plane knows (istioctl proxy-status): its "
        "service, its last report (ACK or NACK) and the version it names, the version it "
        "serves, its service's latest version, whether the two are the same, and when it "
        "was last seen. A NACK's reason is printed under the table; exit 1 when a proxy "
        "seen lately NACKed or does not serve the latest version (a rollout check).",
        epilog="examples:\n  sidemesh proxy-status\n  sidemesh proxy-status web --control "
        "https://cp:15010 --control-ca ca.pem --admin-token-file admin.token")
    p.add_argument("service", nargs="?", metavar="SERVICE", help="only this service's proxies")
    p.add_argument("--stale-after", type=duration_argument, default=DEFAULT_STALE_AFTER,
                   metavar="DURATION", help="a proxy not seen for this long is STALE "
                   "(default 2m: a live one is seen at least every 85 s)")
    _control(p)
    _json(p)
    p.set_defaults(handler=_lazy("status", "main"))


def _proxy_config(sub: Any) -> None:
    p = sub.add_parser(
        "proxy-config", help="a running sidecar's clusters, endpoints, listeners, routes, config",
        formatter_class=FORMATTER,
        description="Read a running sidecar's admin API (/clusters, /config_dump) and show "
        "one part of it as a table (istioctl proxy-config).",
        epilog="examples:\n  sidemesh proxy-config clusters --admin 127.0.0.1:15000\n"
        "  sidemesh proxy-config routes --admin http://10.0.0.7:15000 --json\n"
        "  sidemesh proxy-config config -o yaml > running.yaml")
    parts = p.add_subparsers(dest="part", metavar="PART", required=True)
    for name, text in (("clusters", "clusters: load balancer, endpoints healthy, requests"),
                       ("endpoints", "endpoints: cluster, labels, health, ejection"),
                       ("listeners", "listeners: address, routes, listener plugins"),
                       ("routes", "routes of every listener: match, cluster, timeout, plugins")):
        q = parts.add_parser(name, help=text, description=f"The sidecar's {text}.")
        _admin(q)
        _json(q)
        q.set_defaults(handler=_lazy("proxy_config", "main"))
    q = parts.add_parser("config", help="the applied config, with its version and source",
                         description="The config the sidecar applied (/config_dump): YAML "
                         "with its version and source in a comment, or /config_dump's JSON.")
    _admin(q)
    q.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                   help="yaml (default): the config; json: /config_dump's answer")
    q.add_argument("--json", action="store_true", help="the same as -o json")
    q.set_defaults(handler=_lazy("proxy_config", "main"))


def _config(sub: Any) -> None:
    p = sub.add_parser(
        "config", help="push, get, list or roll back a service's config on the control plane",
        formatter_class=FORMATTER,
        description="A service's configs on the control plane: every push is validated "
        "there in full and stored as a new version; proxies follow the latest.",
        epilog="examples:\n  sidemesh config push web -f web.yaml\n"
        "  sidemesh config get web --version 3 > web-v3.yaml\n"
        "  sidemesh config history web\n  sidemesh config rollback web --to 3")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("push", help="store FILE as the service's next version",
                           description="Validate FILE on the control plane and store it as "
                           "the service's next version (unchanged content keeps the "
                           "version); exit 1 listing every error when it is invalid.")
    q.add_argument("service", metavar="SERVICE")
    q.add_argument("-f", "--file", required=True, metavar="FILE",
                   help="the config, YAML or JSON ('-': stdin)")
    q.add_argument("--dry-run", action="store_true",
                   help="validate on the control plane only, store nothing")
    _control(q)
    _json(q)
    q = actions.add_parser("get", help="the service's latest config (or version N)",
                           description="Print a stored config: YAML with its version in "
                           "a comment (pushable as it is), or the API's JSON answer.")
    q.add_argument("service", metavar="SERVICE")
    q.add_argument("--version", type=int, metavar="N", help="this version, not the latest")
    q.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                   help="yaml (default): the config; json: the API's answer, config included")
    _control(q)
    q = actions.add_parser("history", help="every version of the service, newest first",
                           description="Every stored version: digest, time, author, and "
                           "which version a rollback copied.")
    q.add_argument("service", metavar="SERVICE")
    _control(q)
    _json(q)
    q = actions.add_parser("rollback", help="store version N again as the newest",
                           description="Store the content of version N as a new version: "
                           "proxies move forward to it and the history stays linear.")
    q.add_argument("service", metavar="SERVICE")
    q.add_argument("--to", type=int, required=True, metavar="N", help="the version to restore")
    _control(q)
    _json(q)
    p.set_defaults(handler=_lazy("configs", "main"))


def register(sub: Any, root: argparse.ArgumentParser) -> None:
    """Add the operator's commands to ``sidemesh``'s sub-parsers ``sub``; ``root`` is
    ``sidemesh``'s parser, whose completion script ``sidemesh completion`` prints."""
    _proxy_status(sub)
    _proxy_config(sub)
    _config(sub)
    p = sub.add_parser(
        "version", help="versions: this client, its plugins, the control plane",
        description="The version of this sidemesh and of each installed plugin, and the "
        "control plane's (from its /healthz, no token needed); exit 1 when the control "
        "plane does not answer (--client: do not ask it).")
    p.add_argument("--short", action="store_true", help="versions only, no plugins")
    p.add_argument("--client", action="store_true", help="do not ask the control plane")
    _control(p, token=False)
    _json(p)
    p.set_defaults(handler=_lazy("version", "main"))
    p = sub.add_parser(
        "completion", help="print the shell completion script for bash, zsh or fish",
        formatter_class=FORMATTER,
        description="Print a completion script for sidemesh's commands and options.",
        epilog="examples:\n  source <(sidemesh completion bash)            # this shell\n"
        "  sidemesh completion bash > ~/.local/share/bash-completion/completions/sidemesh\n"
        "  sidemesh completion zsh > \"${fpath[1]}/_sidemesh\"\n"
        "  sidemesh completion fish > ~/.config/fish/completions/sidemesh.fish")
    p.add_argument("shell", choices=["bash", "zsh", "fish"], metavar="SHELL",
                   help="bash, zsh or fish")
    p.set_defaults(handler=_lazy("completion", "main"), root_parser=root)
