"""systemd ``Type=notify`` support: READY=1, WATCHDOG=1, STOPPING=1.

A few lines over an AF_UNIX datagram socket instead of a dependency. When
``NOTIFY_SOCKET`` is unset (not under systemd) every call is a no-op. An
address starting with ``@`` is Linux's abstract namespace (systemd uses those
in containers). Sends never block (a full queue drops the message with a
warning) and never raise: a supervisor's bookkeeping must not stop the node.

:func:`watchdog_interval` says how often to send WATCHDOG=1: half the period
systemd gives in ``WATCHDOG_USEC``, or None when no watchdog is asked for (or
it is meant for another process, per ``WATCHDOG_PID``).

This module does not decide when the node is ready or healthy; the node does.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["READY", "STOPPING", "WATCHDOG", "notify", "watchdog_interval"]

READY = "READY=1"
WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"

_log = logging.getLogger("p2pupdate.sdnotify")


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if not addr.startswith("/"):
        _log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; ignored", addr)
        return None
    return addr


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True if it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, addr)
    except OSError as exc:
        _log.warning("cannot notify systemd (%s) of %s: %s", addr.lstrip("\0"), state, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        _log.warning("WATCHDOG_USEC=%r is not a number; watchdog off", usec)
        return None
    if value <= 0:
        return None
    return value / 1e6 / 2
