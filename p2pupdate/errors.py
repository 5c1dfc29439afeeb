"""The whole exception tree of p2pupdate, named by who is at fault.

Each boundary translates foreign exceptions into one of these exactly once:
the codec turns every msgpack or framing failure into RemoteProtocolError,
the CLI turns UsageError into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "ApplyError",
    "DiskFullError",
    "IncompatiblePeerError",
    "LocalProtocolError",
    "P2PUpdateError",
    "ProtocolError",
    "RemoteProtocolError",
    "StateFileError",
    "TransferError",
    "TrustError",
    "UsageError",
]


class P2PUpdateError(Exception):
    """Base of every error p2pupdate raises on purpose."""


class UsageError(P2PUpdateError):
    """The person running the command made a mistake (exit code 2)."""


class ProtocolError(P2PUpdateError):
    """Something on the wire broke the protocol."""


class LocalProtocolError(ProtocolError):
    """We misused the protocol (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed: close the connection and strike it."""


class IncompatiblePeerError(RemoteProtocolError):
    """The peer speaks another protocol version: close the connection, no strike
    (an old node during an upgrade is not an attacker)."""


class TrustError(P2PUpdateError):
    """An announcement or its content failed a trust check.

    ``reason`` is one of the short names of docs/operations.md (``untrusted``,
    ``bad_signature``, ``below_threshold``, ``expired``, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransferError(P2PUpdateError):
    """The network failed us (connection lost, timeout)."""


class DiskFullError(P2PUpdateError):
    """Not enough free space for a download or an install."""


class StateFileError(P2PUpdateError):
    """A persisted state file is missing, corrupt or unreadable."""


class ApplyError(P2PUpdateError):
    """Installing, health-checking or rolling back a target failed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
