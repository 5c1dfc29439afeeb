"""The persisted form of a download's bitmap: encode, and decode that detects any damage.

Layout (all integers big-endian)::

    magic     4 bytes   b"P2BM"
    version   2 bytes   1
    package  32 bytes   package id (BLAKE3 of the whole package)
    nchunks   4 bytes   number of chunks (bits)
    bits      ceil(nchunks / 8) bytes, first chunk in the high bit, padding bits zero
    checksum 32 bytes   BLAKE3 of everything before it

What it does
    :func:`encode_bitmap` turns (package id, bitmap) into those bytes;
    :func:`decode_bitmap` turns them back and raises ValueError, and only ValueError, on
    any truncation, extension, flipped bit, unknown version, non-zero padding or a package
    id / chunk count other than the expected ones.

What it does not do
    No files: writing the bytes atomically (temp file, fsync, rename) after the data they
    claim is durable is the shell's job. A bitmap is a hint that may lag the partial file,
    never lead it; a decode error means "start from an empty bitmap", not a failure.
"""

from __future__ import annotations

import struct

import blake3
from bitarray import bitarray

__all__ = ["BITMAP_MAGIC", "BITMAP_VERSION", "decode_bitmap", "encode_bitmap"]

BITMAP_MAGIC = b"P2BM"
BITMAP_VERSION = 1
_HEADER = struct.Struct(">4sH32sI")
_CHECKSUM_LEN = 32
_ID_LEN = 32
_MAX_CHUNKS = 0xFFFFFFFF


def encode_bitmap(package_id: bytes, bits: bitarray) -> bytes:
    """The persisted form of ``bits`` for ``package_id`` (32 bytes)."""
    if len(package_id) != _ID_LEN:
        raise ValueError("package_id must be 32 bytes")
    if len(bits) > _MAX_CHUNKS:
        raise ValueError("too many chunks for a bitmap file")
    body = _HEADER.pack(BITMAP_MAGIC, BITMAP_VERSION, bytes(package_id), len(bits))
    body += bitarray(bits, endian="big").tobytes()  # padding bits are zero
    return body + blake3.blake3(body).digest()


def decode_bitmap(
    data: bytes, *, package_id: bytes | None = None, nchunks: int | None = None
) -> bitarray:
    """The bitmap stored in ``data``; ValueError on any damage or mismatch.

    When ``package_id`` or ``nchunks`` is given, the stored one must be equal.
    """
    data = bytes(data)
    if len(data) < _HEADER.size + _CHECKSUM_LEN:
        raise ValueError("bitmap file too short")
    body, checksum = data[:-_CHECKSUM_LEN], data[-_CHECKSUM_LEN:]
    if blake3.blake3(body).digest() != checksum:
        raise ValueError("bitmap file checksum mismatch")
    magic, version, stored_id, count = _HEADER.unpack_from(body)
    if magic != BITMAP_MAGIC:
        raise ValueError("not a bitmap file (bad magic)")
    if version != BITMAP_VERSION:
        raise ValueError(f"unsupported bitmap file version {version}")
    raw = body[_HEADER.size :]
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"bitmap file holds {len(raw)} bytes of bits for {count} chunks")
    bits = bitarray(endian="big")
    bits.frombytes(raw)
    if bits[count:].any():
        raise ValueError("bitmap file has non-zero padding bits")
    del bits[count:]
    if package_id is not None and stored_id != package_id:
        raise ValueError("bitmap file is for another package")
    if nchunks is not None and count != nchunks:
        raise ValueError(f"bitmap file has {count} chunks, expected {nchunks}")
    return bits
