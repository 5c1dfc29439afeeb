"""Proof of the node key at the handshake (protocol 2).

Each side's HELLO carries its node id (an Ed25519 public key) and a fresh
random nonce. Each side then sends HELLO_PROOF: a signature, by the key its
HELLO named, over the *other* side's nonce and both node ids, under a domain
tag. A peer that cannot sign cannot claim a node id, so nothing keyed on the
node id (the one-connection-per-node rule, strikes, bans) can be taken over by
an impostor. Pure: nonces come from the caller.

Over an encrypted connection (``shell.net.tls``: TLS 1.3) the proof also
covers a *channel binding*: the SHA-256 of the TLS server certificate as the
prover saw it (RFC 5929's tls-server-end-point, under its own domain tag). The
server's certificate key never leaves the server, so a relay that terminates
TLS itself shows the client another certificate and both proofs fail; the
connection is bound to both node keys. Over plain TCP (``binding`` empty) an
active relay can still forward the proofs; see docs/security.md.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

from p2pupdate.core.messages import NONCE_LEN, Hello, HelloProof
from p2pupdate.errors import IncompatiblePeerError, RemoteProtocolError

__all__ = [
    "BINDING_LEN",
    "BOUND_PROOF_DOMAIN",
    "PROOF_DOMAIN",
    "check_hello",
    "check_proof",
    "proof_payload",
    "sign_proof",
]

PROOF_DOMAIN = b"p2pupdate/hello-proof/v2\x00"
BOUND_PROOF_DOMAIN = b"p2pupdate/hello-proof-tls/v2\x00"
BINDING_LEN = 32


def proof_payload(
    verifier_nonce: bytes, verifier_id: bytes, prover_id: bytes, binding: bytes = b""
) -> bytes:
    """The bytes the prover signs: fresh for this verifier and this handshake, and
    (encrypted connections) for this TLS channel."""
    if not binding:
        return PROOF_DOMAIN + verifier_nonce + verifier_id + prover_id
    if len(binding) != BINDING_LEN:
        raise ValueError(f"a channel binding is {BINDING_LEN} bytes")
    return BOUND_PROOF_DOMAIN + verifier_nonce + verifier_id + prover_id + binding


def check_hello(hello: Hello, protocol: int) -> None:
    """Refuse a HELLO of another protocol version or without a proper nonce."""
    if hello.protocol != protocol:
        raise IncompatiblePeerError(f"incompatible protocol version {hello.protocol}")
    if len(hello.nonce) != NONCE_LEN:
        raise RemoteProtocolError(f"HELLO nonce must be {NONCE_LEN} bytes")


def sign_proof(
    key: nacl.signing.SigningKey,
    mine: Hello,
    theirs: Hello,
    *,
    binding: bytes = b"",
    admission: bytes = b"",
) -> HelloProof:
    """Our answer to ``theirs``: our key signs their nonce (and the channel binding);
    our fleet admission certificate rides along."""
    payload = proof_payload(theirs.nonce, theirs.node_id, mine.node_id, binding)
    return HelloProof(key.sign(payload).signature, admission)


def check_proof(proof: HelloProof, mine: Hello, theirs: Hello, *, binding: bytes = b"") -> None:
    """Raise RemoteProtocolError unless ``proof`` is ``theirs.node_id`` signing our nonce
    (and the channel binding as we see it)."""
    payload = proof_payload(mine.nonce, mine.node_id, theirs.node_id, binding)
    try:
        nacl.signing.VerifyKey(theirs.node_id).verify(payload, proof.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise RemoteProtocolError("HELLO_PROOF does not prove the claimed node id") from None
