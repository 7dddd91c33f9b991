"""TLS over ``ssl.MemoryBIO`` (``datapath/tls_bridge.py``), against real TLS servers and
clients with certificates from a real CA: what the protocol above it sees when the
peer answers, ends the session, fails or never finishes its handshake, or sends a
record that does not check out."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
import uvloop

from sidemesh.control.ca import CertificateAuthority
from sidemesh.datapath.tls_bridge import TlsBridge, handshake_failure, open_tls
from sidemesh.testing.certs import svid_files

pytestmark = pytest.mark.timeout(30)


Certs = dict[str, dict[str, str]]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = CertificateAuthority.open(tmp_path / "ca", "cluster.local")
    return {name: svid_files(ca, tmp_path, name) for name in ("a", "b")}


def _server_context(files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert_file"], files["key_file"])
    return context


def _client_context(bundle: str, files: dict[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE certificates name no host
    context.load_verify_locations(bundle)
    if files is not None:
        context.load_cert_chain(files["cert_file"], files["key_file"])
    return context


def _mtls_server_context(files: dict[str, str]) -> ssl.SSLContext:
    context = _server_context(files)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(files["bundle_file"])
    return context


class _App(asyncio.Protocol):
    """What the connection's protocol sees: the data, the end, the error."""

    def __init__(self) -> None:
        self.data = b""
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        #: written back to the peer on every read (a server's answer).
        self.answer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.answer and self.transport is not None:
            self.transport.write(self.answer)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _exchange_and_close_notify(certs: Certs) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: many records, several reads
    der = ssl.PEM_cert_to_DER_cert(Path(certs["b"]["cert_file"]).read_text())  # noqa: ASYNC240

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(5)
        writer.write(request + big)
        await writer.drain()
        writer.close()  # close_notify, then FIN
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_server_context(certs["b"]))
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        bridge, app = await open_tls(
            loop, _App, "127.0.0.1", port, _client_context(certs["b"]["bundle_file"]), None
        )
        assert app.transport is bridge
        peer = bridge.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert peer == der
        bridge.write(b"hello")
        assert await asyncio.wait_for(app.lost, 10) is None
        assert app.data == b"hello" + big
        assert app.eof
    finally:
        server.close()
        await server.wait_closed()


async def _untrusted_server(certs: Certs, tmp_path: Path) -> None:
    other = CertificateAuthority.open(tmp_path / "other-ca", "cluster.local")
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=_server_context(certs["b"])
    )
    port = server.sockets[0].getsockname()[1]
    bundle = tmp_path / "other-bundle.pem"
    bundle.write_bytes(other.trust_bundle_pem())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_tls(asyncio.get_running_loop(), _App, "127.0.0.1", port,
                           _client_context(str(bundle)), None)
    finally:
        server.close()
        await server.wait_closed()


async def _closed_in_handshake() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        with pytest.raises(OSError, match="closed the connection during the TLS handshake"):
            await open_tls(asyncio.get_running_loop(), _App, "127.0.0.1", port, context, None)
    finally:
        server.close()
        await server.wait_closed()


class _TamperingServer(asyncio.Protocol):
    """A TLS server at the byte level: after the handshake it answers with one record
    whose last byte is flipped (its authentication tag no longer checks out)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.done:
            try:
                self.tls.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
            self.transport.write(self.outgoing.read())
            if not self.done:
                return
        try:
            if not self.tls.read(1024):
                return
        except ssl.SSLWantReadError:
            return
        self.tls.write(b"x" * 100)
        record = bytearray(self.outgoing.read())
        record[-1] ^= 0x01
        self.transport.write(bytes(record))


async def _tampered_record(certs: Certs) -> None:
    loop = asyncio.get_running_loop()
    context = _server_context(certs["b"])
    server = await loop.create_server(lambda: _TamperingServer(context), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bridge, app = await open_tls(
            loop, _App, "127.0.0.1", port, _client_context(certs["b"]["bundle_file"]), None
        )
        bridge.write(b"ping")
        error = await asyncio.wait_for(app.lost, 10)
        assert isinstance(error, ssl.SSLError)
        assert app.data == b""  # nothing of the forged record reaches the protocol
        assert bridge.is_closing()
        bridge.write(b"after")  # a writer that has not noticed yet is not raised at
    finally:
        server.close()
        await server.wait_closed()


class _Listener:
    """A plain listening socket serving TLS through a server-side :class:`TlsBridge`
    for each connection, keeping the protocols above them."""

    def __init__(self, context: ssl.SSLContext, handshake_timeout: float = 10.0) -> None:
        self.context = context
        self.timeout = handshake_timeout
        self.apps: list[_App] = []
        #: why handshakes did not succeed, as on_failure heard.
        self.failures: list[str] = []
        self.server: asyncio.Server | None = None

    def _make(self) -> TlsBridge:
        app = _App()
        app.answer = b"pong"
        self.apps.append(app)
        return TlsBridge(self.context, app, server_side=True, handshake_timeout=self.timeout,
                         on_failure=lambda exc: self.failures.append(handshake_failure(exc)))

    async def __aenter__(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._make, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _serves_a_verified_client(certs: Certs) -> None:
    client_der = ssl.PEM_cert_to_DER_cert(Path(certs["a"]["cert_file"]).read_text())  # noqa: ASYNC240
    listener = _Listener(_mtls_server_context(certs["b"]))
    async with listener as port:
        context = _client_context(certs["b"]["bundle_file"], certs["a"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"pong"
        (app,) = listener.apps
        assert app.transport is not None
        ssl_object = app.transport.get_extra_info("ssl_object")
        assert ssl_object.getpeercert(binary_form=True) == client_der
        writer.close()  # close_notify, then FIN
        assert await asyncio.wait_for(app.lost, 10) is None
        assert app.data == b"ping"
        assert app.eof
        assert listener.failures == []


async def _refuses_a_client_without_a_certificate(certs: Certs) -> None:
    listener = _Listener(_mtls_server_context(certs["b"]))
    async with listener as port:
        context = _client_context(certs["b"]["bundle_file"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"ping")
        # TLS 1.3: the client's side of the handshake is done before the server has
        # checked it; the server's alert says why it was refused.
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        (app,) = listener.apps
        # The protocol made at accept hears the end, and never had a connection.
        assert isinstance(await asyncio.wait_for(app.lost, 10), ssl.SSLError)
        assert app.transport is None
        assert app.data == b""
        assert listener.failures == ["no_certificate"]


async def _drops_a_client_that_never_finishes_its_handshake(certs: Certs) -> None:
    listener = _Listener(_mtls_server_context(certs["b"]), handshake_timeout=0.3)
    async with listener as port:
        silent = await asyncio.open_connection("127.0.0.1", port)
        # A ClientHello's first bytes, then nothing.
        stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled[1].write(b"\x16\x03\x01\x00\xff")
        started = asyncio.get_running_loop().time()
        for reader, _ in (silent, stalled):
            # Closed by the server: an end of stream or a reset, well before the test's.
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        assert asyncio.get_running_loop().time() - started < 3
        for app in listener.apps:
            assert isinstance(await asyncio.wait_for(app.lost, 5), TimeoutError)
            assert app.transport is None
        assert len(listener.apps) == 2
        assert listener.failures == ["timeout", "timeout"]
        for _, writer in (silent, stalled):
            writer.close()


def test_an_exchange_and_the_servers_close_notify(certs: Certs) -> None:
    uvloop.run(asyncio.wait_for(_exchange_and_close_notify(certs), 20))


def test_an_untrusted_server_fails_the_handshake(certs: Certs, tmp_path: Path) -> None:
    uvloop.run(asyncio.wait_for(_untrusted_server(certs, tmp_path), 20))


def test_a_server_that_closes_in_the_handshake_is_a_connection_error() -> None:
    uvloop.run(asyncio.wait_for(_closed_in_handshake(), 20))


def test_a_record_that_fails_its_check_ends_the_connection_with_the_error(
    certs: Certs,
) -> None:
    uvloop.run(asyncio.wait_for(_tampered_record(certs), 20))


def test_a_listener_serves_a_verified_client_and_hears_its_close_notify(
    certs: Certs,
) -> None:
    uvloop.run(asyncio.wait_for(_serves_a_verified_client(certs), 20))


def test_a_client_without_a_certificate_gets_the_alert_and_frees_its_protocol(
    certs: Certs,
) -> None:
    uvloop.run(asyncio.wait_for(_refuses_a_client_without_a_certificate(certs), 20))


def test_a_client_that_never_finishes_its_handshake_is_dropped(certs: Certs) -> None:
    uvloop.run(asyncio.wait_for(_drops_a_client_that_never_finishes_its_handshake(certs), 20))
