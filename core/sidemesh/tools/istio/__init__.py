"""``sidemesh import istio``: Istio's VirtualService, DestinationRule, ServiceEntry,
Gateway, PeerAuthentication and AuthorizationPolicy turned into sidecar configs.

Registering imports only argparse: the importer itself loads when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

EPILOG = """\
examples:
  sidemesh import istio bookinfo/*.yaml --out configs/
  sidemesh import istio reviews.yaml --out configs/ \\
      --endpoint reviews/v1=10.0.0.5:9080 --endpoint reviews/v2=10.0.0.6:9080
  sidemesh import istio mesh.yaml --control https://cp:15010 --control-ca ca.pem \\
      --admin-token-file admin.token

Each line on stdout is a field that could not be translated, 'FILE:DOC: KIND/NAME PATH:
reason'; notes (assumptions, nothing lost) go to stderr. docs/istio.md has the mapping.
"""


def _run(args: argparse.Namespace) -> int:
    from sidemesh.tools.istio.command import main

    return main(args)


def register(sources: Any) -> None:
    """Add ``istio`` to the sub-parsers of ``sidemesh import``."""
    p = sources.add_parser(
        "istio", help="Istio networking and security resources -> sidecar configs",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Translate VirtualService, DestinationRule, ServiceEntry, Gateway,\n"
        "PeerAuthentication and AuthorizationPolicy resources into one sidecar config per\n"
        "service (and per Gateway). Every field that cannot be translated is printed with\n"
        "its path and the reason; the exit status is 0 only when nothing was lost.")
    p.add_argument("files", nargs="+", metavar="FILE", help="Istio YAML (several resources "
                   "per file, '---' between them, or a kubectl List)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="write DIR/<service>.yaml")
    target.add_argument("--control", metavar="URL[,URL...]", help="push each config to the "
                        "control plane instead (PUT /v1/services/<service>/config)")
    p.add_argument("--admin-token-file", metavar="FILE", help="with --control: the admin "
                   "token (default: $SIDEMESH_ADMIN_TOKEN)")
    p.add_argument("--control-ca", metavar="FILE", help="with an https:// --control: the CA "
                   "bundle its certificate must chain to")
    p.add_argument("--allow-partial", action="store_true", help="write or push the configs "
                   "even when something could not be translated, and exit 0")
    p.add_argument("--endpoint", action="append", default=[], metavar="HOST[/SUBSET]=ADDR",
                   help="where a host's instances are (repeatable; ADDR is host:port, "
                   "several separated by commas): the instances of a subset get its labels. "
                   "Default: the host's DNS name, e.g. reviews.default.svc.cluster.local:80")
    p.add_argument("--app", action="append", default=[], metavar="[SERVICE=]ADDR",
                   help="the local app behind a service's inbound listener (repeatable; "
                   "default localhost:8080)")
    p.add_argument("--service", action="append", default=[], metavar="NAME[.NAMESPACE]",
                   help="also write a config for this service (a client the input does not "
                   "name)")
    p.add_argument("--namespace", default="default", metavar="NS",
                   help="namespace of resources without one (default: default)")
    p.add_argument("--trust-domain", default="cluster.local", metavar="DOMAIN",
                   help="the mesh's SPIFFE trust domain (default: cluster.local)")
    p.add_argument("--cluster-domain", default="cluster.local", metavar="DOMAIN",
                   help="the Kubernetes DNS domain of <svc>.<ns>.svc.DOMAIN hosts")
    p.add_argument("--root-namespace", default="istio-system", metavar="NS",
                   help="Istio's root namespace: its policies apply mesh-wide")
    p.add_argument("--port", type=int, default=80, metavar="N",
                   help="port of a host when neither the route nor a ServiceEntry names one")
    p.add_argument("--inbound", default="0.0.0.0:15006", metavar="ADDR",
                   help="address of each service's inbound listener (default 0.0.0.0:15006; "
                   "a Gateway's listeners take its host)")
    p.add_argument("--outbound", default="127.0.0.1:15001", metavar="ADDR",
                   help="address of each sidecar's outbound listener (default 127.0.0.1:15001)")
    p.add_argument("--admin", default="127.0.0.1:15000", metavar="ADDR",
                   help="the sidecars' admin API address, or 'off' (default 127.0.0.1:15000)")
    p.set_defaults(handler=_run, check=_check, parser=p)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sidemesh.tools.istio.command import options_from

    try:
        args.options = options_from(args)
    except ValueError as exc:
        parser.error(str(exc))
