"""The connections a request travels on, as policies see them: the downstream one it
came on, and the settings of a new connection (listener or upstream) that policies fill
in when it is set up."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sidemesh.datapath.stash import Stash
from sidemesh.datapath.views import ClusterView, EndpointView

__all__ = ["ConnectionInfo", "ConnectionSetup"]


class ConnectionInfo:
    """The downstream connection a request came on.

    :ivar client_address: ``host:port`` of the peer.
    :ivar local_address: ``host:port`` the connection was accepted on, when the access
        log names it (``%DOWNSTREAM_LOCAL_ADDRESS%``); "" otherwise.
    :ivar tls: whether the connection is TLS.
    :ivar peer_certificate: the client's DER certificate, when it presented one.
    :ivar stash: per-connection state for policies (cache a parsed identity here), keyed
        by :class:`~sidemesh.StashKey`.
    """

    __slots__ = ("client_address", "local_address", "peer_certificate", "stash", "tls")

    def __init__(
        self, client_address: str, tls: bool = False, peer_certificate: bytes | None = None
    ) -> None:
        self.client_address = client_address
        self.local_address = ""
        self.tls = tls
        self.peer_certificate = peer_certificate
        self.stash = Stash()


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
    """

    kind: Literal["listener", "upstream"]
    listener: str
    cluster: ClusterView | None = None
    endpoint: EndpointView | None = None
    ssl_context: ssl.SSLContext | None = None
    tls_optional: bool = False
    server_hostname: str | None = None
    verify_peer: Callable[[bytes], str | None] | None = None
