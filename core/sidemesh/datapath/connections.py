"""The connections a request travels on, as policies see them: the downstream one it
came on, and the settings of a new connection (listener or upstream) that policies fill
in when it is set up."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sidemesh.datapath.stash import Stash
from sidemesh.datapath.views import ClusterView, EndpointView

__all__ = ["ConnectionInfo", "ConnectionSetup", "describe_local"]

#: ``SO_ORIGINAL_DST`` (linux/netfilter_ipv4.h; ``IP6T_SO_ORIGINAL_DST`` has the same
#: number): where a connection was going before iptables ``REDIRECT`` sent it here.
SO_ORIGINAL_DST = 80


class ConnectionInfo:
    """The downstream connection a request came on.

    :ivar client_address: ``host:port`` of the peer.
    :ivar local_address: ``host:port`` the connection was accepted on, when the access
        log names it (``%DOWNSTREAM_LOCAL_ADDRESS%``); "" otherwise.
    :ivar original_destination: ``host:port`` the client connected to before iptables
        redirected the connection to a listener with ``use_original_dst`` (IPv6 as
        ``[addr]:port``); ``None`` on other listeners and for connections made to the
        listener's own address.
    :ivar tls: whether the connection is TLS.
    :ivar peer_certificate: the client's DER certificate, when it presented one.
    :ivar stash: per-connection state for policies (cache a parsed identity here), keyed
        by :class:`~sidemesh.StashKey`.
    """

    __slots__ = (
        "client_address",
        "local_address",
        "original_destination",
        "peer_certificate",
        "stash",
        "tls",
    )

    def __init__(
        self, client_address: str, tls: bool = False, peer_certificate: bytes | None = None
    ) -> None:
        self.client_address = client_address
        self.local_address = ""
        self.original_destination: str | None = None
        self.tls = tls
        self.peer_certificate = peer_certificate
        self.stash = Stash()


def describe_local(info: ConnectionInfo, transport: object, local: bool, original: bool) -> None:
    """Fill in what ``info`` says of the local end, each a system call made only when
    asked for: ``local_address`` (restored to the original destination, as Envoy's
    ``original_dst`` listener filter does) and ``original_destination``."""
    if not (local or original):
        return
    get_extra_info = getattr(transport, "get_extra_info", None)
    if get_extra_info is None:
        return
    sockname = get_extra_info("sockname")
    if not isinstance(sockname, tuple):
        return
    here = _address(sockname[0], sockname[1])
    if original:
        found = _original_destination(get_extra_info("socket"))
        info.original_destination = found if found != here else None
    if local:
        info.local_address = info.original_destination or here


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _original_destination(sock: object) -> str | None:
    """``SO_ORIGINAL_DST`` of an accepted socket; ``None`` when conntrack knows nothing
    of it (no NAT on this machine, or not a TCP socket)."""
    getsockopt = getattr(sock, "getsockopt", None)
    family = getattr(sock, "family", None)
    if getsockopt is None:
        return None
    try:
        if family == socket.AF_INET6:
            # struct sockaddr_in6: family, port (big-endian), flowinfo, address, scope.
            raw = getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            # struct sockaddr_in: family, port (big-endian), address.
            raw = getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
    except (OSError, ValueError):
        return None
    return _address(host, int.from_bytes(raw[2:4], "big"))


@dataclass
class ConnectionSetup:
    """What :meth:`Policy.connection_setup` may fill in for one connection.

    :param kind: ``"listener"`` when a listener starts, ``"upstream"`` before a new
        connection to an endpoint is opened.
    :param listener: the listener's name.
    :param cluster: the cluster connected to (``kind="upstream"`` only).
    :param endpoint: the endpoint connected to (``kind="upstream"`` only).
    :param ssl_context: set it to speak TLS on this connection (a server context for a
        listener, a client context upstream).
    :param tls_optional: listener only: accept plain HTTP too on a TLS listener (the
        first byte tells them apart) -- Istio's ``PERMISSIVE`` mode.
    :param server_hostname: upstream only: SNI to send (default: none).
    :param verify_peer: upstream only: called with the server's DER certificate after the
        handshake; return ``None`` to accept or a message naming what was wrong. A
        rejected connection fails the attempt with flag ``UF``
        (:attr:`ResponseFlag.UPSTREAM_CONNECTION_FAILURE`).
    :param alpn_protocols: the protocols a policy's ``ssl_context`` must offer by ALPN
        (``ssl.SSLContext.set_alpn_protocols``), set by the core before the policies
        run: ``("h2", "http/1.1")`` on a listener (it serves both), the cluster's on an
        upstream connection (``("h2",)`` for ``protocol: http2``, none for ``http1``).
    """

    kind: Literal["listener", "upstream"]
    listener: str
    cluster: ClusterView | None = None
    endpoint: EndpointView | None = None
    ssl_context: ssl.SSLContext | None = None
    tls_optional: bool = False
    server_hostname: str | None = None
    verify_peer: Callable[[bytes], str | None] | None = None
    alpn_protocols: tuple[str, ...] = ()
