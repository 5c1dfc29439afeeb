"""The simulation's target app: a small executable shell script padded to size.

``app_bytes(version, healthy, size)`` is a ``/bin/sh`` script that prints
``simapp VERSION`` and exits 0 (or, for a bad release, prints an error and
exits 1, so the node's default health check, ``APP --version``, fails),
followed by deterministic incompressible padding up to exactly ``size``
bytes. The shell stops reading at ``exit``, so the padding is never parsed.
Padding differs per version, so a new release shares no chunk with the old.
"""

from __future__ import annotations

import blake3

__all__ = ["APP_NAME", "app_bytes", "app_header"]

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
