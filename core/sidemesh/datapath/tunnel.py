"""Upgrade tunnelling (Envoy's ``upgrade_configs``): a request with ``Upgrade`` (a
WebSocket handshake, say) on a route listing its protocol in ``upgrades`` becomes a
raw byte tunnel between the client and the upstream once the upstream answers ``101
Switching Protocols``.

The HTTP/1.1 path pays nothing for it: the client connection's parser stops after an
upgrade request (llhttp does) and an ``UpgradeHold`` (upgrade_hold.py) stands in for
it, holding what the client sends next; forward.py calls in here only for a request
with ``Upgrade`` and for a ``101``. The rules hold against a hostile client or upstream:

- the bytes after an upgrade request are never read as HTTP while its answer is
  pending: they go through the tunnel after a 101, and after any other answer the
  connection closes (a client cannot slip a request past routing by drawing a 200: the
  "WebSocket smuggling" attack);
- a 101 opens a tunnel only for the request that offered that protocol on a route that
  allows it; any other 101 is the upstream's protocol error (``502``, flag ``UPE``);
- on a route without the protocol the request goes upstream as plain HTTP (``Upgrade``
  removed, as before this module) and what follows is read as HTTP/1.1 again;
- a tunnel's upstream connection is never pooled again; the tunnel ends when either
  side closes or the listener's ``idle_timeout`` passes without a byte either way.
"""

from __future__ import annotations

import asyncio

from sidemesh.datapath.codec import client_fields, response_head
from sidemesh.datapath.downstream import DownstreamConnection
from sidemesh.datapath.exchange import ClientSide, UpstreamExchange
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.messages import Request, Response
from sidemesh.datapath.outcome import Outcome
from sidemesh.datapath.pool import UpstreamConnection
from sidemesh.datapath.upgrade_hold import UpgradeHold

__all__ = ["offer_upgrade", "refuse_upgrade", "tunnel"]

_SWITCHING = "Switching Protocols"


def _hold_of(conn: ClientSide, request: Request) -> UpgradeHold | None:
    """The hold of ``request``'s connection when it is that upgrade request's (HTTP/1.1
    only: an HTTP/2 stream upgrades nothing)."""
    if not isinstance(conn, DownstreamConnection):
        return None
    hold = conn.parser
    return hold if isinstance(hold, UpgradeHold) and hold.request is request else None


def _resume(conn: ClientSide, hold: UpgradeHold) -> None:
    """Read HTTP/1.1 again, starting with the held bytes."""
    assert isinstance(conn, DownstreamConnection)  # it has a hold
    conn.parser = hold.parser
    conn._resume_reading()
    if hold.held:
        data, hold.held = b"".join(hold.held), []
        conn.data_received(data)


def offer_upgrade(conn: ClientSide, request: Request, allowed: frozenset[str]) -> None:
    """For a request with an Upgrade field, its upstream fields ready: offer the upgrade
    upstream when ``allowed`` names its protocol, else go on as plain HTTP."""
    hold = _hold_of(conn, request)
    if hold is None:
        return  # no "Connection: upgrade": nothing was asked, the field is hop-by-hop
    value = request._core["upgrade"].strip(" \t")
    if value.lower() not in allowed:
        _resume(conn, hold)
        return
    hold.protocol = value.lower()
    # A tunnel or a refused upgrade: either way the connection ends with this request,
    # so the held bytes are never read as HTTP.
    conn.keep_alive = False
    request.headers._add_trusted("upgrade", value)
    request.headers._add_trusted("connection", "upgrade")


def refuse_upgrade(conn: ClientSide, request: Request) -> None:
    """An upgrade request answered without a route: read HTTP/1.1 again."""
    hold = _hold_of(conn, request)
    if hold is not None:
        _resume(conn, hold)


async def tunnel(
    conn: ClientSide,
    request: Request,
    response: Response,
    upstream: UpstreamExchange,
    outcome: Outcome,
) -> bool:
    """Relay a 101 and carry bytes both ways until the tunnel ends. Returns ``False``
    (the upstream connection closed, nothing sent) when the 101 answers no upgrade this
    request offered: the caller answers 502 ``UPE``."""
    hold = _hold_of(conn, request)
    offered = hold.protocol if hold is not None else ""
    answered = (response.headers.get("upgrade") or "").strip(" \t")
    if (
        hold is None
        or not offered
        or answered.lower() != offered
        or not isinstance(conn, DownstreamConnection)
        or not isinstance(upstream, UpstreamConnection)
    ):
        upstream.close()
        return False
    outcome.status = 101
    outcome.response = response
    # The route's timeout bounded the handshake; the tunnel has the idle timeout.
    upstream.cancel_deadline()
    fields, _ = client_fields(response)
    extra = b"upgrade: %s\r\nconnection: upgrade\r\n" % answered.encode("latin-1")
    raw = (fields if isinstance(fields, bytes) else fields.encode()) + extra
    conn.response_started = True
    conn.write_raw(response_head(101, response.reason or _SWITCHING, raw, False, False))
    conn.batch.flush()  # the tunnel's bytes are written directly, after the 101
    client, server = conn.transport, upstream.transport
    if conn.closed or upstream.closed or client is None or server is None:
        # Gone before the switch: their connection_lost has run already.
        outcome.flags.append(
            ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
            if conn.closed
            else ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        )
        upstream.close()
        return True
    pipe = _Tunnel(conn.limits.idle_timeout)
    pipe.client = _End(pipe, conn, client, server)
    pipe.server = _End(pipe, upstream, server, client)
    client.set_protocol(pipe.client)
    server.set_protocol(pipe.server)
    # Reading first, so that writing the held bytes can pause it again (flow control).
    conn._resume_reading()
    upstream.resume()
    for data in hold.held:
        pipe.client.data_received(data)
    hold.held = []
    # What came with the 101 (the upstream may speak first).
    upstream.attach(pipe.server)
    try:
        await pipe.done
    finally:
        pipe.end()
        outcome.bytes_received = pipe.client.bytes
        conn.bytes_sent += pipe.server.bytes
    return True


class _Tunnel:
    """Both ends of one tunnel, and its idle timer."""

    client: _End
    server: _End

    def __init__(self, idle: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = idle or None
        self.last = self.loop.time()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.timer = self.loop.call_later(idle, self._check_idle) if idle else None

    def _check_idle(self) -> None:
        idle = self.idle
        assert idle is not None
        left = self.last + idle - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._check_idle)
        else:
            self.timer = None
            self.end()

    def half_close(self, end: _End) -> bool:
        """``end`` read the end of its peer's bytes: pass the half-close on where both
        transports can (plain TCP), else (TLS) close the tunnel."""
        end.eof = True
        other = self.server if end is self.client else self.client
        if other.eof or not (end.own.can_write_eof() and end.out.can_write_eof()):
            self.end()
            return False
        end.out.write_eof()
        return True

    def end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # close() sends what is buffered first.
        self.client.own.close()
        self.server.own.close()
        if not self.done.done():
            self.done.set_result(None)


class _End(asyncio.Protocol):
    """One end of a tunnel, as its transport's protocol: what it reads goes out of the
    other transport, and it stops that one's reading while its own cannot write."""

    def __init__(
        self,
        pipe: _Tunnel,
        owner: asyncio.BaseProtocol,
        own: asyncio.Transport,
        out: asyncio.Transport,
    ) -> None:
        self.pipe = pipe
        #: the protocol this end replaced: it still cleans up when the connection is lost.
        self.owner = owner
        self.own = own
        self.out = out
        self.bytes = 0
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        self.pipe.last = self.pipe.loop.time()
        self.out.write(data)

    def write_body(self, data: bytes) -> None:
        # The upstream's bytes that came with its 101 (UpstreamConnection.attach).
        self.data_received(data)

    def pause_source(self) -> bool:
        return False

    def eof_received(self) -> bool:
        return self.pipe.half_close(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)
        self.pipe.end()

    def pause_writing(self) -> None:
        if not self.out.is_closing():
            self.out.pause_reading()

    def resume_writing(self) -> None:
        if not self.out.is_closing():
            self.out.resume_reading()
