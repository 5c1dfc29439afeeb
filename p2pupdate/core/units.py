"""Parsing of sizes (``512KiB``), rates (``10MiB/s``) and durations (``30d``).

Pure functions; every malformed string raises ValueError with a message that
can be shown to the user as it is.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["format_size", "parse_duration", "parse_rate", "parse_size"]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# re.ASCII: \d would otherwise accept any Unicode digit.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.ASCII)


def parse_size(text: str) -> int:
    """Parse a byte count such as ``1048576``, ``512KiB``, ``1.5GiB`` or ``10MB``."""
    m = _SIZE_RE.match(text)
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (expected e.g. 1048576, 512KiB, 1GiB)")
    # Fraction, not float: exact for any length of digits ("1.1GiB" is 1181116006 bytes).
    return int(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_rate(text: str) -> int:
    """Parse a rate in bytes per second; ``0`` or ``unlimited`` mean no limit (0)."""
    raw = text.strip()
    if raw.lower() in ("unlimited", "none", "0"):
        return 0
    if raw.lower().endswith("/s"):
        raw = raw[:-2]
    try:
        return parse_size(raw)
    except ValueError:
        raise ValueError(f"bad rate {text!r} (expected e.g. 10MiB/s, 512KiB/s, 0)") from None


def parse_duration(text: str) -> float:
    """Parse a duration in seconds: a number with an optional s, m, h or d suffix."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"bad duration {text!r} (expected e.g. 30d, 12h, 90s)")
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value


def format_size(n: float) -> str:
    """Human-readable binary size, e.g. ``32.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
