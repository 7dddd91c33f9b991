"""The ``sidemesh`` command.

Long-running commands (``proxy``, ``control``) are imported only when run, so
``sidemesh validate`` in a CI job stays quick and needs nothing but the config code.

Other distributions add commands through the entry-point group ``sidemesh.commands``:
each entry point names a ``register(subparsers)`` function that adds its parser (the
argparse sub-parsers of ``sidemesh``) and sets ``handler``, a function of the parsed
arguments returning the exit status, as the core's commands below do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from sidemesh import __version__
from sidemesh.api.durations import duration_argument, parse_duration
from sidemesh.process.discovery import registration_arguments
from sidemesh.tools import capture, kube
from sidemesh.tools.config_commands import register as register_config_commands
from sidemesh.tools.istio import register as register_istio
from sidemesh.tools.ops import register as register_ops

__all__ = ["COMMANDS_GROUP", "build_parser", "main"]

COMMANDS_GROUP = "sidemesh.commands"

EPILOG = """\
examples:
  sidemesh validate sidemesh.yaml          check a config (exit 1 lists every error)
  sidemesh plugins                         installed plugins, versions and hooks
  sidemesh schema retry                    the retry plugin's config schema
  sidemesh explain -c sidemesh.yaml GET http://reviews/reviews/1 -H 'x-user: jason'
                                           which route, chain and endpoints a request gets
  sidemesh proxy -c sidemesh.yaml          run a sidecar from a file (SIGHUP reloads it)
  sidemesh control --data ./sidemesh-data  run the control plane
  sidemesh new-plugin ratelimit            start a plugin: sidemesh-ratelimit/
  sidemesh import istio bookinfo/*.yaml --out configs/
                                           Istio resources -> one config per service

Run 'sidemesh COMMAND --help' for a command's options.
"""


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (0: one per core)")
    return count


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        handler = getattr(importlib.import_module(module), function)
        return int(handler(args))

    return run


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="sqlite", metavar="STORE",
                   help="where the state is kept: sqlite (default: DIR/sidemesh.db, one "
                   "control plane) or etcd://HOST:PORT[,HOST:PORT...] (an etcd v3 cluster "
                   "any number of control-plane replicas share)")
    p.add_argument("--store-prefix", default="/sidemesh", metavar="PREFIX",
                   help="with an etcd store: the key prefix (default /sidemesh)")


def _check_proxy(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.config is None) == (args.control is None):
        parser.error("give either -c/--config FILE or --control URL (with --service)")
    if args.control is not None and not args.service:
        parser.error("--control needs --service NAME")
    if args.control is not None:
        from sidemesh.config.build import control_urls

        try:
            control_urls(args.control)
        except ValueError as exc:
            parser.error(f"--control: {exc}")


def _check_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.revoke is None and not args.list and not args.service:
        parser.error("give --service NAME (to issue a token), --revoke ID or --list")
    if args.revoke is not None and args.service:
        parser.error("--revoke takes the token id alone, not --service")
    if args.ttl is not None and (args.revoke is not None or args.list):
        parser.error("--ttl is for a new token (--service NAME)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sidemesh", formatter_class=formatter, epilog=EPILOG,
        description="sidemesh: a service-mesh sidecar proxy whose every feature "
                    "(retries, circuit breaking, traffic splits, mTLS, tracing) is a plugin.")
    parser.add_argument("--version", action="version", version=f"sidemesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    register_config_commands(sub)

    p = sub.add_parser(
        "proxy", help="run a sidecar (from a file, or from the control plane)",
        formatter_class=formatter,
        description="Run a sidecar proxy. From a file it reloads on SIGHUP (keeping the old "
        "config if the new one is invalid); from a control plane it follows config updates.",
        epilog="examples:\n  sidemesh proxy -c sidemesh.yaml\n"
        "  sidemesh proxy --control http://127.0.0.1:15010 --service reviews "
        "--token-file reviews.token\n"
        "  sidemesh proxy --control https://cp-1:15010,https://cp-2:15010 --control-ca ca.pem "
        "--service reviews --token-file reviews.token")
    p.add_argument("-c", "--config", metavar="FILE", help="sidemesh.yaml to run")
    p.add_argument("--control", metavar="URL[,URL...]",
                   help="control plane URL instead of a file; several replicas separated by "
                   "commas: the first is used, the next when it does not answer")
    p.add_argument("--control-ca", metavar="FILE",
                   help="with an https:// --control: the CA bundle its certificate must "
                   "chain to, for every replica (sidemesh control --print-ca)")
    p.add_argument("--service", metavar="NAME", help="service name (with --control)")
    p.add_argument("--token-file", metavar="FILE",
                   help="sidecar token file (default: $SIDEMESH_TOKEN)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="with --control: where the last applied config is kept, used at "
                   "start when the control plane is unreachable (default: "
                   "$SIDEMESH_STATE_DIR or ~/.sidemesh)")
    p.add_argument("--proxy-id", metavar="ID",
                   help="with --control: this sidecar's id in GET /v1/proxies (default: "
                   "SERVICE-HOSTNAME-PID)")
    p.add_argument("--bind-host", metavar="HOST",
                   help="with --control: bind every listener and the admin API on HOST "
                   "instead of the config's host, ports unchanged, and send to localhost:PORT "
                   "endpoints (the local app) on HOST too (several sidecars of one "
                   "service on one machine, each on its own address, like pods)")
    p.add_argument("--drain-timeout", type=duration_argument, default=parse_duration("10s"),
                   metavar="DURATION", help="on SIGTERM, wait this long for in-flight "
                   "requests (default 10s)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--access-log", default="-", metavar="TARGET",
                   help="where the JSON access log goes: - (stdout, default), a file "
                   "path (appended to), or off")
    p.add_argument("--concurrency", type=_workers, default=1, metavar="N",
                   help="worker processes serving the listeners, as Envoy's --concurrency "
                   "(default 1; 0: one per core); they share the ports (SO_REUSEPORT), "
                   "one admin API sums them")
    kube.status_arguments(p)
    registration_arguments(p)
    p.set_defaults(handler=_lazy("sidemesh.process.runtime", "main_proxy"), check=_check_proxy,
                   parser=p)

    p = sub.add_parser("control", help="run the control plane (config store, CA, tokens)",
                       description="Run the control plane: control API, config store and "
                       "certificate authority. Without --admin-token-file it creates "
                       "DIR/admin.token on first start.")
    p.add_argument("--data", default="./sidemesh-data", metavar="DIR",
                   help="state directory (default ./sidemesh-data)")
    p.add_argument("--listen", default="127.0.0.1:15010", metavar="ADDR",
                   help="host:port to serve on (default 127.0.0.1:15010)")
    p.add_argument("--admin-token-file", metavar="FILE", help="file holding the admin token "
                   "(replicas sharing an etcd store are given the same one)")
    _store_arguments(p)
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true",
                     help="serve HTTPS on a loopback address too (it always does elsewhere)")
    tls.add_argument("--insecure-http", action="store_true",
                     help="serve plain HTTP on a non-loopback address (tokens and configs "
                     "in clear text: only behind something that encrypts)")
    p.add_argument("--tls-san", action="append", default=[], metavar="NAME",
                   help="a DNS name or IP the API is reached by, for its certificate "
                   "(repeatable; the listen host, localhost and loopback are included)")
    p.add_argument("--print-ca", action="store_true",
                   help="print the CA bundle sidecars need for --control-ca, and exit")
    p.set_defaults(handler=_lazy("sidemesh.control", "main"))

    p = sub.add_parser(
        "token", help="issue, list or revoke sidecar tokens (bound to one service)",
        formatter_class=formatter,
        description="Issue a token a sidecar uses to fetch its service's config and "
        "certificates: the token alone on stdout, its id on stderr. Without --ttl it never "
        "expires; any token can be revoked by its id.",
        epilog="examples:\n  sidemesh token --service web --ttl 720h > web.token\n"
        "  sidemesh token --list\n  sidemesh token --revoke 1f0e6c2a9b7d4e53\n"
        "  sidemesh token --control http://10.0.0.5:15010 --admin-token-file admin.token "
        "--revoke 1f0e6c2a9b7d4e53")
    p.add_argument("--data", default="./sidemesh-data", metavar="DIR",
                   help="the control plane's state directory (default ./sidemesh-data)")
    p.add_argument("--service", metavar="NAME",
                   help="the service to issue a token for (with --list: only its tokens)")
    p.add_argument("--ttl", type=duration_argument, metavar="DURATION",
                   help="the new token expires after this long, e.g. 24h (default: never)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--revoke", metavar="ID", help="revoke the token with this id")
    action.add_argument("--list", action="store_true",
                        help="list tokens: id, service, state, created, expires, revoked")
    p.add_argument("--control", metavar="URL",
                   help="ask this running control plane (with the admin token) instead of "
                   "writing DIR's store: a revocation then cuts open long polls at once")
    p.add_argument("--control-ca", metavar="FILE",
                   help="with an https:// --control: the CA bundle its certificate must "
                   "chain to")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="with --control: the admin token (default DIR/admin.token)")
    _store_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(handler=_lazy("sidemesh.control", "main_token"), check=_check_token,
                   parser=p)

    p = sub.add_parser("new-plugin", help="create a new plugin distribution sidemesh-NAME",
                       description="Write sidemesh-NAME/: pyproject with the entry point, "
                       "a policy, its config schema, README, CHANGELOG and passing tests.")
    p.add_argument("name", metavar="NAME", help="the plugin's name, e.g. ratelimit")
    p.add_argument("--dir", default=".", metavar="DIR",
                   help="where sidemesh-NAME/ is created (default: the current directory)")
    p.set_defaults(handler=_lazy("sidemesh.tools.scaffold", "main"))

    p = sub.add_parser("import", help="convert another mesh's resources into sidecar configs",
                       description="Convert another mesh's configuration into sidecar "
                       "configs; run 'sidemesh import SOURCE --help' for one source.")
    register_istio(p.add_subparsers(dest="source", metavar="SOURCE", required=True))
    kube.register(sub)
    capture.register(sub)

    register_ops(sub, parser)
    _add_contributed_commands(sub)
    return parser


def _add_contributed_commands(sub: Any) -> None:
    """The commands of the ``sidemesh.commands`` group, after the core's (argparse refuses
    a name taken already). One that fails is reported and the others still come: an
    incompatible distribution must not take every command down with it."""
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
            print(f"sidemesh: command {ep.name!r} ({dist}) failed to register: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args.parser, args)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sidemesh schema | head`: the reader left; not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("SIDEMESH_DEBUG"):
            raise
        print(f"sidemesh {args.command}: error: {type(exc).__name__}: {exc} "
              "(set SIDEMESH_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
