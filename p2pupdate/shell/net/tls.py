"""Encrypted connections: TLS 1.3 (stdlib ``ssl``, OpenSSL) over any trio stream.

Each node makes a fresh TLS identity when it starts: an Ed25519 key and a
self-signed certificate (``cryptography``), held in memory and in a private
temporary file only while the ``ssl`` context loads it. Certificates are not
checked against any CA: who the peer is comes from our own handshake, which
runs inside TLS and signs the *channel binding* (SHA-256 of the server's
certificate, RFC 5929 tls-server-end-point) with each node key
(``core.handshake``). The dialer is the TLS client, the accepting node the
server; clients present no certificate.

:class:`TlsStream` drives a stdlib ``ssl.SSLObject`` over memory BIOs, as
``trio.SSLStream`` and asyncio do; all cryptography is OpenSSL's. It exists for
one reason: ``SSL_read`` yields one 16 KiB record per call, and
``trio.SSLStream.receive_some`` returns after each, with a scheduler round per
record; a 64 KiB chunk took five. ``receive_some`` here decrypts every record
already received in one call, which made encrypted transfers as fast as plain
ones (docs/performance.md). It relies on TLS 1.3 having no renegotiation: after
the handshake, reading and writing are independent.

TLS 1.3 only: forward secrecy (ephemeral key exchange), AEAD records with
sequence numbers (tampering, reordering and replay within a connection break
it), and fresh handshake randoms (a recorded session replays nowhere).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import ssl
import tempfile

import trio

from p2pupdate.errors import TransferError

__all__ = ["TlsIdentity", "TlsStream", "channel_binding"]

# Bytes read from the transport at once: up to four 64 KiB chunks with framing.
_RECEIVE = 256 * 1024
# Largest plaintext of one TLS record: reading more at once only allocates more.
_RECORD = 16384


def channel_binding(cert_der: bytes) -> bytes:
    """What both HELLO_PROOFs sign: SHA-256 of the server certificate (DER)."""
    return hashlib.sha256(cert_der).digest()


def _self_signed() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key and a self-signed certificate for it, both PEM."""
    # Imported here: ``cryptography`` costs ~30 ms of start-up to every node and every
    # publish, and only an encrypting one ever makes a certificate.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pupdate node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        # Nobody checks the dates (peers are authenticated by the channel binding);
        # a long validity only keeps picky TLS stacks quiet.
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class TlsStream(trio.abc.Stream):
    """TLS over ``transport``: one reader task and any number of senders (serialised)."""

    def __init__(
        self, transport: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._send_lock = trio.Lock()  # transport writes, in the order the BIO holds them

    def getpeercert(self) -> bytes | None:
        """The peer's certificate (DER), or None (a TLS client presents none)."""
        return self._ssl.getpeercert(binary_form=True)

    async def _flush(self) -> None:
        # The lock is almost always free (the connection serialises its senders; the
        # reader flushes only post-handshake replies): take it without a scheduler round.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            data = self._outgoing.read()
            if data:
                await self.transport.send_all(data)
        finally:
            self._send_lock.release()

    async def _fill(self) -> bool:
        """More bytes from the transport into the TLS engine; False at EOF."""
        data = await self.transport.receive_some(_RECEIVE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()  # the alert, if any
                raise trio.BrokenResourceError(f"TLS handshake: {exc}") from exc
            await self._flush()
            return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)  # a memory BIO takes it all
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Every record already received, decrypted, up to ``max_bytes``; b"" at EOF.
        Any tampered, reordered or replayed record raises BrokenResourceError."""
        want = max_bytes or _RECEIVE
        while True:
            parts: list[bytes] = []
            total = 0
            eof = False
            try:
                while total < want:
                    data = self._ssl.read(min(want - total, _RECORD))
                    if not data:
                        eof = True
                        break
                    parts.append(data)
                    total += len(data)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS: {exc}") from exc
            if self._outgoing.pending and not self._send_lock.locked():
                await self._flush()  # a post-handshake reply; else the next send takes it
            if parts:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if eof:
                return b""
            await self._fill()

    async def aclose(self) -> None:
        try:
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()  # queue close_notify
            with trio.move_on_after(0.5):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.transport.aclose()


class TlsIdentity:
    """This node's TLS certificate and the client and server contexts built on it."""

    def __init__(self) -> None:
        key_pem, cert_pem = _self_signed()
        self.cert_der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
        self.binding = channel_binding(self.cert_der)
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.minimum_version = ssl.TLSVersion.TLSv1_3
        with tempfile.TemporaryDirectory(prefix="p2pupdate-tls-") as tmp:
            path = os.path.join(tmp, "identity.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem + cert_pem)
            self.server_context.load_cert_chain(path)
        self.client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_context.minimum_version = ssl.TLSVersion.TLSv1_3
        # No CA: the peer is authenticated by its node key over the channel binding.
        self.client_context.check_hostname = False
        self.client_context.verify_mode = ssl.CERT_NONE

    async def wrap(
        self, stream: trio.abc.Stream, *, server_side: bool, seconds: float
    ) -> tuple[TlsStream, bytes]:
        """Run the TLS handshake over ``stream``; the TLS stream and the channel binding."""
        context = self.server_context if server_side else self.client_context
        tls = TlsStream(stream, context, server_side=server_side)
        try:
            with trio.fail_after(seconds):
                await tls.do_handshake()
        except trio.TooSlowError:
            raise TransferError("TLS handshake timeout") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransferError(f"TLS handshake failed: {exc}") from None
        if server_side:
            return tls, self.binding
        der = tls.getpeercert()
        if not der:
            raise TransferError("TLS server sent no certificate")
        return tls, channel_binding(der)
