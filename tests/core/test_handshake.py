"""Handshake proof: only the holder of a node key can claim its node id."""

from __future__ import annotations

import nacl.signing
import pytest

from p2pupdate.core.handshake import check_hello, check_proof, sign_proof
from p2pupdate.core.messages import PROTOCOL_VERSION, Hello, HelloProof
from p2pupdate.errors import RemoteProtocolError

A = nacl.signing.SigningKey(b"\x01" * 32)
B = nacl.signing.SigningKey(b"\x02" * 32)
M = nacl.signing.SigningKey(b"\x03" * 32)


def hello(key: nacl.signing.SigningKey, nonce: bytes, claim: bytes | None = None) -> Hello:
    return Hello(PROTOCOL_VERSION, claim or bytes(key.verify_key), 4000, "t", nonce)


def test_a_proof_by_the_claimed_key_over_our_nonce_is_accepted() -> None:
    mine, theirs = hello(A, b"a" * 32), hello(B, b"b" * 32)
    check_proof(sign_proof(B, theirs, mine), mine, theirs)


def test_impostor_claiming_another_node_id_cannot_prove_it() -> None:
    mine = hello(A, b"a" * 32)
    impostor = hello(M, b"m" * 32, claim=bytes(B.verify_key))
    with pytest.raises(RemoteProtocolError, match="does not prove"):
        check_proof(sign_proof(M, impostor, mine), mine, impostor)


def test_a_proof_replayed_for_another_nonce_or_another_verifier_is_refused() -> None:
    mine, theirs = hello(A, b"a" * 32), hello(B, b"b" * 32)
    proof = sign_proof(B, theirs, mine)
    with pytest.raises(RemoteProtocolError):
        check_proof(proof, hello(A, b"x" * 32), theirs)  # a fresh nonce of ours
    with pytest.raises(RemoteProtocolError):
        check_proof(proof, hello(M, b"a" * 32), theirs)  # someone else's connection
    with pytest.raises(RemoteProtocolError):
        check_proof(HelloProof(b"\x00" * 64), mine, theirs)


def test_hello_of_another_version_or_without_a_nonce_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="incompatible protocol version 1"):
        check_hello(Hello(1, bytes(A.verify_key), 1, "old"), PROTOCOL_VERSION)
    with pytest.raises(RemoteProtocolError, match="nonce"):
        check_hello(Hello(PROTOCOL_VERSION, bytes(A.verify_key), 1, "x", b"short"), 2)
    check_hello(hello(A, b"a" * 32), PROTOCOL_VERSION)


def test_a_node_id_that_is_not_a_valid_key_fails_cleanly() -> None:
    mine = hello(A, b"a" * 32)
    junk = hello(M, b"m" * 32, claim=b"\xff" * 32)
    with pytest.raises(RemoteProtocolError):
        check_proof(sign_proof(M, junk, mine), mine, junk)


def test_a_bound_proof_holds_only_for_the_channel_it_signed() -> None:
    mine, theirs = hello(A, b"a" * 32), hello(B, b"b" * 32)
    channel, other = b"\x11" * 32, b"\x22" * 32
    proof = sign_proof(B, theirs, mine, binding=channel, admission=b"cert")
    assert proof.admission == b"cert"
    check_proof(proof, mine, theirs, binding=channel)
    with pytest.raises(RemoteProtocolError):
        check_proof(proof, mine, theirs, binding=other)  # a relay's TLS certificate
    with pytest.raises(RemoteProtocolError):
        check_proof(proof, mine, theirs)  # bound proofs are not plain proofs
    with pytest.raises(RemoteProtocolError):
        check_proof(sign_proof(B, theirs, mine), mine, theirs, binding=channel)
