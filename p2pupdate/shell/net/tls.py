"""Encrypted connections: TLS 1.3 (stdlib ``ssl`` under ``trio.SSLStream``).

Each node makes a fresh TLS identity when it starts: an Ed25519 key and a
self-signed certificate (``cryptography``), held in memory and in a private
temporary file only while the ``ssl`` context loads it. Certificates are not
checked against any CA: who the peer is comes from our own handshake, which
runs inside TLS and signs the *channel binding* (SHA-256 of the server's
certificate, RFC 5929 tls-server-end-point) with each node key
(``core.handshake``). The dialer is the TLS client, the accepting node the
server; clients present no certificate.

TLS 1.3 only: forward secrecy (ephemeral key exchange), AEAD records with
sequence numbers (tampering, reordering and replay within a connection break
it), and fresh handshake randoms (a recorded session replays nowhere).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from p2pupdate.errors import TransferError

__all__ = ["TlsIdentity", "channel_binding"]


def channel_binding(cert_der: bytes) -> bytes:
    """What both HELLO_PROOFs sign: SHA-256 of the server certificate (DER)."""
    return hashlib.sha256(cert_der).digest()


def _self_signed() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key and a self-signed certificate for it, both PEM."""
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
    ) -> tuple[trio.SSLStream[trio.abc.Stream], bytes]:
        """Run the TLS handshake over ``stream``; the TLS stream and the channel binding."""
        context = self.server_context if server_side else self.client_context
        tls = trio.SSLStream(stream, context, server_side=server_side)
        try:
            with trio.fail_after(seconds):
                await tls.do_handshake()
        except trio.TooSlowError:
            raise TransferError("TLS handshake timeout") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransferError(f"TLS handshake failed: {exc}") from None
        if server_side:
            return tls, self.binding
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise TransferError("TLS server sent no certificate")
        return tls, channel_binding(der)
