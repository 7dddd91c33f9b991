"""The nat-table rules of transparent capture, and applying or removing them.

Istio's ``istio-iptables`` with its chain names changed: ``SIDEMESH_OUTPUT`` sends a
pod's outbound TCP to the outbound listener, ``SIDEMESH_INBOUND`` its inbound TCP to the
inbound listener; the proxy's own connections (its uid, or gid) and calls to
``127.0.0.1`` are left alone, so the proxy's upstream traffic never loops back into it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CHAINS", "Capture", "CaptureError", "apply", "clean", "rules"]

#: the jumps from the built-in chains into sidemesh's own, as ``iptables -D`` takes them.
JUMPS = (("PREROUTING", "SIDEMESH_INBOUND"), ("OUTPUT", "SIDEMESH_OUTPUT"))
CHAINS = ("SIDEMESH_INBOUND", "SIDEMESH_IN_REDIRECT", "SIDEMESH_OUTPUT", "SIDEMESH_REDIRECT")
TIMEOUT = 30.0


class CaptureError(Exception):
    """iptables is missing or refused the rules; the message says what it printed."""


@dataclass(frozen=True)
class Capture:
    """What to capture. A port of 0 turns that direction off."""

    inbound_port: int = 15006
    outbound_port: int = 15001
    uid: int | None = 1337
    gid: int | None = None
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    #: destinations whose outbound TCP is captured; ``()`` means every one.
    include_outbound_cidrs: tuple[str, ...] = ()


def rules(capture: Capture) -> str:
    """The rules in ``iptables-restore`` format (the ``nat`` table only)."""
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    if capture.inbound_port:
        lines.append(f"-A SIDEMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports "
                     f"{capture.inbound_port}")
        lines += [f"-A SIDEMESH_INBOUND -p tcp --dport {port} -j RETURN"
                  for port in capture.exclude_inbound_ports]
        lines.append("-A SIDEMESH_INBOUND -p tcp -j SIDEMESH_IN_REDIRECT")
        lines.append("-A PREROUTING -p tcp -j SIDEMESH_INBOUND")
    if capture.outbound_port:
        lines.append(f"-A SIDEMESH_REDIRECT -p tcp -j REDIRECT --to-ports "
                     f"{capture.outbound_port}")
        # The proxy's own connections go where they were going: without these, its
        # upstream connections would come back to its outbound listener.
        if capture.uid is not None:
            lines.append(f"-A SIDEMESH_OUTPUT -m owner --uid-owner {capture.uid} -j RETURN")
        if capture.gid is not None:
            lines.append(f"-A SIDEMESH_OUTPUT -m owner --gid-owner {capture.gid} -j RETURN")
        # Calls to localhost are the pod talking to itself (its proxy's listeners too).
        lines.append("-A SIDEMESH_OUTPUT -d 127.0.0.1/32 -j RETURN")
        lines += [f"-A SIDEMESH_OUTPUT -p tcp --dport {port} -j RETURN"
                  for port in capture.exclude_outbound_ports]
        lines += [f"-A SIDEMESH_OUTPUT -d {cidr} -j SIDEMESH_REDIRECT"
                  for cidr in capture.include_outbound_cidrs] or [
                      "-A SIDEMESH_OUTPUT -j SIDEMESH_REDIRECT"]
        lines.append("-A OUTPUT -p tcp -j SIDEMESH_OUTPUT")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CaptureError(f"{name} not found on PATH: install iptables (Debian and Ubuntu: "
                           "apt-get install iptables)")
    return path


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaptureError(f"{argv[0]} failed: {exc}") from None


def clean() -> int:
    """Remove sidemesh's rules and chains from the nat table (none there is fine);
    returns how many jumps were removed."""
    iptables = _tool("iptables")
    removed = 0
    for parent, chain in JUMPS:
        # A jump added twice (rules applied by hand twice) is removed twice.
        while _run([iptables, "-t", "nat", "-D", parent, "-p", "tcp", "-j", chain]).returncode == 0:
            removed += 1
    for chain in CHAINS:
        _run([iptables, "-t", "nat", "-F", chain])
    for chain in CHAINS:
        done = _run([iptables, "-t", "nat", "-X", chain])
        if done.returncode != 0 and _exists(iptables, chain):
            raise CaptureError(f"cannot remove chain {chain}: {_said(done)}")
    return removed


def _exists(iptables: str, chain: str) -> bool:
    return _run([iptables, "-t", "nat", "-n", "-L", chain]).returncode == 0


def _said(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"


def apply(capture: Capture) -> str:
    """Replace sidemesh's rules with these (applying twice is applying once); returns
    the rules applied."""
    restore = _tool("iptables-restore")
    clean()
    text = rules(capture)
    done = _run([restore, "--noflush"], stdin=text)
    if done.returncode != 0:
        raise CaptureError(f"iptables-restore refused the rules: {_said(done)}")
    return text
