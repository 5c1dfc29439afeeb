"""The simulation's target app: a small executable shell script padded to size.

``app_bytes(version, healthy, size)`` is a ``/bin/sh`` script that prints
``simapp VERSION`` and exits 0 (or, for a bad release, prints an error and
exits 1, so the node's default health check, ``APP --version``, fails),
followed by deterministic incompressible padding up to exactly ``size``
bytes. The shell stops reading at ``exit``, so the padding is never parsed.
Padding differs per version, so a new release shares no chunk with the old;
``app_changed`` makes one that does (a small change: a share of the chunks replaced).
"""

from __future__ import annotations

import random

import blake3

__all__ = ["APP_NAME", "app_bytes", "app_changed", "app_header"]

_CHUNK = 64 * 1024

APP_NAME = "simapp"


def app_header(version: str, healthy: bool) -> bytes:
    """The script part (everything before the padding)."""
    if healthy:
        body = f'echo "{APP_NAME} {version}"\nexit 0\n'
    else:
        body = f'echo "{APP_NAME} {version}: broken release, refusing to start" >&2\nexit 1\n'
    return (
        "#!/bin/sh\n"
        f"# p2pupdate simulation app, version {version}; "
        "everything after 'exit' is padding to the package size\n"
        f"{body}"
        "#\n"
    ).encode()


def app_bytes(version: str, healthy: bool, size: int) -> bytes:
    """The whole package: header plus padding, exactly ``size`` bytes."""
    header = app_header(version, healthy)
    if size < len(header):
        raise ValueError(f"package size {size} is smaller than the app header ({len(header)})")
    seed = f"p2pupdate-sim-app/{version}/{healthy}".encode()
    pad = blake3.blake3(seed).digest(length=size - len(header)) if size > len(header) else b""
    return header + pad


def app_changed(previous: bytes, version: str, healthy: bool, share: float) -> bytes:
    """A new version that replaces ``share`` of ``previous``'s 64 KiB chunks (a small
    change): the header chunk (the script names the version) and others picked by a
    seed of the version, each filled with new padding; every other chunk kept as is."""
    header = app_header(version, healthy)
    size = len(previous)
    if size < len(header):
        raise ValueError(f"package size {size} is smaller than the app header ({len(header)})")
    nchunks = -(-size // _CHUNK)
    count = min(nchunks, max(1, round(nchunks * share)))
    rng = random.Random(f"p2pupdate-sim-app/changed/{version}")
    picked = {0, *rng.sample(range(1, nchunks), count - 1)} if count > 1 else {0}
    out = bytearray(previous)
    for i in sorted(picked):
        start, end = i * _CHUNK, min(size, (i + 1) * _CHUNK)
        seed = f"p2pupdate-sim-app/{version}/{healthy}/chunk{i}".encode()
        out[start:end] = blake3.blake3(seed).digest(length=end - start)
    out[: len(header)] = header
    return bytes(out)
