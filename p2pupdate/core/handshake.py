"""Proof of the node key at the handshake (protocol 2).

Each side's HELLO carries its node id (an Ed25519 public key) and a fresh
random nonce. Each side then sends HELLO_PROOF: a signature, by the key its
HELLO named, over the *other* side's nonce and both node ids, under a domain
tag. A peer that cannot sign cannot claim a node id, so nothing keyed on the
node id (the one-connection-per-node rule, strikes, bans) can be taken over by
an impostor. Pure: nonces come from the caller.

What it does not do: bind the rest of the connection to the key (there is no
encryption), so an active relay between two honest nodes can forward their
proofs; see docs/security.md.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

from p2pupdate.core.messages import NONCE_LEN, Hello, HelloProof
from p2pupdate.errors import IncompatiblePeerError, RemoteProtocolError

__all__ = ["PROOF_DOMAIN", "check_hello", "check_proof", "proof_payload", "sign_proof"]

PROOF_DOMAIN = b"p2pupdate/hello-proof/v2\x00"


def proof_payload(verifier_nonce: bytes, verifier_id: bytes, prover_id: bytes) -> bytes:
    """The bytes the prover signs: fresh for this verifier and this handshake."""
    return PROOF_DOMAIN + verifier_nonce + verifier_id + prover_id


def check_hello(hello: Hello, protocol: int) -> None:
    """Refuse a HELLO of another protocol version or without a proper nonce."""
    if hello.protocol != protocol:
        raise IncompatiblePeerError(f"incompatible protocol version {hello.protocol}")
    if len(hello.nonce) != NONCE_LEN:
        raise RemoteProtocolError(f"HELLO nonce must be {NONCE_LEN} bytes")


def sign_proof(key: nacl.signing.SigningKey, mine: Hello, theirs: Hello) -> HelloProof:
    """Our answer to ``theirs``: our key signs their nonce."""
    payload = proof_payload(theirs.nonce, theirs.node_id, mine.node_id)
    return HelloProof(key.sign(payload).signature)


def check_proof(proof: HelloProof, mine: Hello, theirs: Hello) -> None:
    """Raise RemoteProtocolError unless ``proof`` is ``theirs.node_id`` signing our nonce."""
    payload = proof_payload(mine.nonce, mine.node_id, theirs.node_id)
    try:
        nacl.signing.VerifyKey(theirs.node_id).verify(payload, proof.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise RemoteProtocolError("HELLO_PROOF does not prove the claimed node id") from None
