"""What a client connection keeps of the bytes after an upgrade request (tunnel.py has
the rest of upgrade tunnelling).

llhttp stops parsing after a request with ``Upgrade`` and ``Connection: upgrade``: what
follows may be another protocol's bytes. They are not read as HTTP/1.1 until the
request's route and answer say what they are; meanwhile an :class:`UpgradeHold` stands
in for the connection's parser, and reading pauses.
"""

from __future__ import annotations

from typing import Any

from sidemesh.datapath.messages import Request

__all__ = ["UpgradeHold"]


class UpgradeHold:
    """Stands in for a client connection's parser after an upgrade request."""

    def __init__(self, parser: Any, request: Request | None, data: bytes) -> None:
        #: the HTTP/1.1 parser to go on with when the request is forwarded as plain HTTP.
        self.parser = parser
        #: the upgrade request (the last one parsed).
        self.request = request
        #: what the client sent after the request, for the tunnel.
        self.held: list[bytes] = [data] if data else []
        #: the protocol offered upstream (lower case); "" until a route allowed it.
        self.protocol = ""

    def feed_data(self, data: bytes) -> None:
        # Only what a transport delivered as it was being paused.
        self.held.append(data)
