"""``publish --renew VERSION`` without ``--file``: the package cached on a node.

A release must be re-signed before its announcement expires, or re-imaged hosts
stop getting it. The authority may no longer have the file at hand; every node
that installed the release has it in its cache. Run on such a host (or with its
data dir mounted), ``publish --renew 2.0.0 --data-dir DIR`` finds the channel's
stored announcement in ``DIR``, checks it is ``2.0.0`` and signed by one of the
keys given with ``--key``, and uses the cached package it names. The package is
hashed again before anything is signed (:mod:`p2pupdate.commands.publish`), and
the hash must equal the announced package id: the cache is read as if it had
just arrived from the network.

A node keeps only the newest announcement per channel, so this finds the
version that node currently holds; for an older version give ``--file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import decode_announcement
from p2pupdate.errors import ProtocolError, UsageError
from p2pupdate.shell.datadir import announcement_path, store_dir
from p2pupdate.shell.transfer.store import cached_package_path

__all__ = ["CachedRelease", "find_cached_release"]


@dataclass(frozen=True)
class CachedRelease:
    """A node's cached copy of a release: the file and the id it must hash to."""

    path: Path
    package_id: bytes


def find_cached_release(
    data_dir: Path, channel: str, version: str, keys: list[nacl.signing.SigningKey]
) -> CachedRelease:
    """The cached package of ``channel`` ``version`` in a node's data dir, or UsageError."""
    where = announcement_path(data_dir, channel)
    hint = "give --file PACKAGE"
    try:
        with open(where, "rb") as f:
            raw = f.read(DEFAULT_LIMITS.max_announcement + 1)
    except FileNotFoundError:
        raise UsageError(
            f"no announcement for {channel} in {data_dir} (is it a node's data dir?); {hint}"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror}; {hint}") from None
    try:
        ann = decode_announcement(raw)
    except (ProtocolError, ValueError) as exc:
        raise UsageError(f"{where} is not a valid announcement ({exc}); {hint}") from None
    body = ann.body
    if body.channel != channel:
        raise UsageError(f"{where} is for channel {body.channel}, not {channel}; {hint}")
    if body.version != version:
        raise UsageError(
            f"the node in {data_dir} holds {channel} {body.version}, not {version}; {hint}"
        )
    # Signed by one of our keys (expired is fine: that is what a renewal is for). The
    # node checked it when it arrived; a data dir is still checked like network input.
    if not ann.valid_signers() & {bytes(k.verify_key) for k in keys}:
        raise UsageError(
            f"the stored announcement of {channel} {version} in {data_dir} is not signed "
            f"by any --key given; {hint}"
        )
    package = cached_package_path(store_dir(data_dir), body.package_id)
    if not package.is_file():
        raise UsageError(
            f"the node in {data_dir} does not hold {channel} {version} in its cache "
            f"({package.name}); {hint}"
        )
    return CachedRelease(package, body.package_id)
