"""``sidemesh iptables``: the rules of transparent capture, printed or applied, as
Istio's ``istio-iptables`` (the ``istio-init`` container) writes them.

Registering imports only argparse: the rules load when the command runs."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

__all__ = ["register"]

EPILOG = """\
examples:
  sidemesh iptables                       print the rules (iptables-restore format)
  sidemesh iptables --apply --uid 1337    apply them (root, or CAP_NET_ADMIN)
  sidemesh iptables --clean               remove them

The proxy runs as --uid (or --gid): its own connections are not captured, so its
upstream traffic leaves as it would without capture. Its listeners need
use_original_dst: true to route by the address the app called (docs/concepts.md,
"Transparent capture")."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return port


def _ports(text: str) -> tuple[int, ...]:
    ports = tuple(_port(item.strip()) for item in text.split(",") if item.strip())
    if 0 in ports:
        raise argparse.ArgumentTypeError("port 0 cannot be excluded")
    return ports


def _id(text: str) -> int:
    if not text.isdigit() or int(text) >= 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a numeric id")
    return int(text)


def _cidrs(text: str) -> tuple[str, ...]:
    if text.strip() == "*":
        return ()
    found = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if network.version != 4:
            raise argparse.ArgumentTypeError(f"{item}: only IPv4 is captured")
        found.append(str(network))
    if not found:
        raise argparse.ArgumentTypeError("no CIDR given (* means every destination)")
    return tuple(found)


def _run(args: argparse.Namespace) -> int:
    from sidemesh.tools.capture.rules import Capture, CaptureError, apply, clean, rules

    capture = Capture(
        inbound_port=args.inbound_port, outbound_port=args.outbound_port, uid=args.uid,
        gid=args.gid, exclude_inbound_ports=tuple(p for ps in args.exclude_inbound_ports
                                                  for p in ps),
        exclude_outbound_ports=tuple(p for ps in args.exclude_outbound_ports for p in ps),
        include_outbound_cidrs=args.include_outbound_cidrs)
    try:
        if args.clean:
            clean()
            print("sidemesh iptables: capture rules removed", file=sys.stderr)
        elif args.apply:
            print(apply(capture), end="")
            print("sidemesh iptables: capture rules applied (nat table)", file=sys.stderr)
        else:
            print(rules(capture), end="")
    except CaptureError as exc:
        print(f"sidemesh iptables: error: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    """Add ``iptables`` to the sub-parsers of ``sidemesh``."""
    p = sub.add_parser(
        "iptables", help="print or apply the iptables rules of transparent capture",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Redirect a pod's (a network namespace's) TCP to the sidecar: outbound "
        "connections to --outbound-port, inbound ones to --inbound-port, except the "
        "proxy's own (by uid/gid) and calls to 127.0.0.1, as Istio's istio-init does. "
        "IPv4 (iptables nat table) only.")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true",
                        help="apply the rules with iptables-restore, replacing sidemesh's "
                        "earlier ones (default: print them)")
    action.add_argument("--clean", action="store_true",
                        help="remove sidemesh's rules and chains")
    p.add_argument("--inbound-port", type=_port, default=15006, metavar="PORT",
                   help="the inbound listener (use_original_dst) that inbound TCP goes to "
                   "(default 15006, Istio's; 0: inbound is not captured)")
    p.add_argument("--outbound-port", type=_port, default=15001, metavar="PORT",
                   help="the outbound listener (use_original_dst) that outbound TCP goes to "
                   "(default 15001, Istio's; 0: outbound is not captured)")
    p.add_argument("--uid", type=_id, default=1337, metavar="UID",
                   help="the proxy's user id: its connections are not captured "
                   "(default 1337, Istio's)")
    p.add_argument("--gid", type=_id, metavar="GID",
                   help="also leave the connections of this group id alone")
    p.add_argument("--exclude-inbound-ports", type=_ports, action="append", default=[],
                   metavar="PORT[,PORT...]",
                   help="inbound ports not captured (the status port 15021, say)")
    p.add_argument("--exclude-outbound-ports", type=_ports, action="append", default=[],
                   metavar="PORT[,PORT...]", help="outbound destination ports not captured")
    p.add_argument("--include-outbound-cidrs", type=_cidrs, default=(), metavar="CIDR[,...]",
                   help="capture outbound TCP to these destinations only (Istio's "
                   "includeOutboundIPRanges; default *: every destination)")
    p.set_defaults(handler=_run)
