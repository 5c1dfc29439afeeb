"""The shared parsing of every signed record on the wire: announcements, yanks, node
reports, fleet certificates and revocation lists.

Each of them is a msgpack array decoded with hard limits on every length (no maps, no
extension types), and most carry a list of ``[32-byte key, 64-byte signature]`` pairs.
Those two steps live here once; what a record's fields mean stays with the record.
Every failure is one :class:`RemoteProtocolError` naming the record.
"""

from __future__ import annotations

from typing import Any

import msgpack

from p2pupdate.errors import RemoteProtocolError

__all__ = ["signature_pairs", "unpack_limited"]


def unpack_limited(data: bytes, what: str, *, max_str: int, max_bin: int, max_array: int) -> Any:
    """msgpack-decode ``data`` with every length capped; RemoteProtocolError if it fails."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; translate them all once
        raise RemoteProtocolError(f"malformed {what}: {exc}") from exc


def signature_pairs(
    items: object, what: str, max_signatures: int
) -> tuple[tuple[bytes, bytes], ...]:
    """A list of 1..max ``[32-byte key, 64-byte signature]`` pairs, checked for form only."""
    if not isinstance(items, list) or not 1 <= len(items) <= max_signatures:
        raise RemoteProtocolError(f"{what} needs 1..{max_signatures} signatures")
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], bytes)
            and len(item[0]) == 32
            and isinstance(item[1], bytes)
            and len(item[1]) == 64
        ):
            raise RemoteProtocolError(
                f"{what}: a signature entry must be [32-byte key, 64-byte sig]"
            )
        pairs.append((item[0], item[1]))
    return tuple(pairs)
