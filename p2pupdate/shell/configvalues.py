"""Value converters of the node's settings: one config value or flag in, a checked value out.

Each converter takes the raw value (from TOML or a flag) and a :class:`_Src`
naming where it came from, and returns the checked value or raises
:class:`~p2pupdate.errors.UsageError` with one line naming that key or flag.
:mod:`p2pupdate.shell.nodeconfig` merges the config file with the flags using
them. Also :func:`parse_hostport` and :func:`format_hostport` (``publish``
uses them too).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.keys import parse_pubkey
from p2pupdate.core.units import parse_duration, parse_rate, parse_size
from p2pupdate.errors import UsageError
from p2pupdate.shell.events import LOG_LEVELS

__all__ = ["format_hostport", "parse_hostport"]


# ---------------------------------------------------------------- HOST:PORT

_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", re.ASCII)
_EXAMPLE = "expected HOST:PORT, e.g. 127.0.0.1:4000, [::1]:4000 or node1.example:4000"


def parse_hostport(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """Parse ``IPv4:PORT``, ``[IPv6]:PORT`` or ``hostname:PORT``; UsageError if malformed.

    The host comes back without brackets. Port 0 (any free port, for
    listening) is refused when ``allow_port_zero`` is false.
    """

    def bad(why: str) -> UsageError:
        return UsageError(f"bad address {text!r}: {why} ({_EXAMPLE})")

    if not isinstance(text, str):
        raise UsageError(f"bad address {text!r}: not a string ({_EXAMPLE})")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise bad("missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise bad("missing ':PORT' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise bad("missing ':PORT'")
        if ":" in host:
            raise bad("an IPv6 address goes in brackets, like [::1]:4000")
        if not host:
            raise bad("missing host")
        _check_host(host, bad)
    if not _PORT_RE.fullmatch(port_text):
        raise bad(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise bad(f"port {port} is above 65535")
    if port == 0 and not allow_port_zero:
        raise bad("port 0 cannot be connected to")
    return host, port


def _check_host(host: str, bad: Callable[[str], UsageError]) -> None:
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise bad(f"{host!r} is not an IPv4 address") from None
        return
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise bad(f"{host!r} is not a valid host name")


def format_hostport(host: str, port: int) -> str:
    """The text form :func:`parse_hostport` reads back (brackets around IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- value converters

T = TypeVar("T")


@dataclass(frozen=True)
class _Src:
    """Where a value came from: its label in messages, and the base of relative paths."""

    where: str
    base: Path

    def err(self, message: str) -> UsageError:
        return UsageError(f"{self.where}: {message}")


def _typename(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _expect(value: object, kind: type | tuple[type, ...], what: str, src: _Src) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise src.err(f"must be {what}, not {_typename(value)}")


def _bool(value: object, src: _Src) -> bool:
    _expect(value, bool, "true or false", src)
    assert isinstance(value, bool)
    return value


def _int_at_least(low: int) -> Callable[[object, _Src], int]:
    def conv(value: object, src: _Src) -> int:
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value, re.ASCII):
            value = int(value)
        _expect(value, int, "an integer", src)
        assert isinstance(value, int)
        if value < low:
            raise src.err(f"must be at least {low}, not {value}")
        return value

    return conv


def _unit(parse: Callable[[str], int], what: str) -> Callable[[object, _Src], int]:
    def conv(value: object, src: _Src) -> int:
        if isinstance(value, str):
            try:
                return parse(value)
            except ValueError as exc:
                raise src.err(str(exc)) from None
        _expect(value, int, what, src)
        assert isinstance(value, int)
        if value < 0:
            raise src.err(f"must not be negative, not {value}")
        return value

    return conv


_size = _unit(parse_size, "a size like 1GiB or a number of bytes")
_rate = _unit(parse_rate, "a rate like 10MiB/s or a number of bytes per second")


def _duration(value: object, src: _Src) -> float:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise src.err(str(exc)) from None
    _expect(value, (int, float), "a number of seconds or a duration like 30s, 5m, 1h", src)
    assert isinstance(value, (int, float))
    if not value > 0 or value == float("inf"):
        raise src.err(f"must be a positive number of seconds, not {value}")
    return float(value)


def _path(value: object, src: _Src) -> Path:
    if isinstance(value, Path):
        text = str(value)
    else:
        _expect(value, str, "a path", src)
        assert isinstance(value, str)
        text = value
    if not text or "\0" in text:
        raise src.err(f"bad path {text!r}")
    return (src.base / Path(text).expanduser()).absolute()


def _hostport(value: object, src: _Src, *, allow_zero: bool = True) -> tuple[str, int]:
    _expect(value, str, "a HOST:PORT string", src)
    assert isinstance(value, str)
    try:
        return parse_hostport(value, allow_port_zero=allow_zero)
    except UsageError as exc:
        raise src.err(str(exc)) from None


def _peer(value: object, src: _Src) -> tuple[str, int]:
    return _hostport(value, src, allow_zero=False)


def _pubkey(value: object, src: _Src) -> bytes:
    _expect(value, str, "a public key string ed25519:<hex>", src)
    assert isinstance(value, str)
    try:
        return parse_pubkey(value)
    except ValueError as exc:
        raise src.err(str(exc)) from None


def _list_of(item: Callable[[object, _Src], T]) -> Callable[[object, _Src], list[T]]:
    def conv(value: object, src: _Src) -> list[T]:
        _expect(value, list, "an array", src)
        assert isinstance(value, list)
        return [item(v, _Src(f"{src.where}[{i}]", src.base)) for i, v in enumerate(value)]

    return conv


def _log_level(value: object, src: _Src) -> str:
    _expect(value, str, "a string", src)
    assert isinstance(value, str)
    if value.lower() not in LOG_LEVELS:
        raise src.err(f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return value.lower()


def _command(value: object, src: _Src) -> list[str]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise src.err(f"cannot split command {value!r}: {exc}") from None
    else:
        _expect(value, list, "a command string or an array of strings", src)
        assert isinstance(value, list)
        if not all(isinstance(a, str) for a in value):
            raise src.err("must be an array of strings")
        argv = list(value)
    if not argv or not argv[0]:
        raise src.err("empty command")
    return argv


def _channel(value: object, src: _Src) -> str:
    _expect(value, str, "a channel name", src)
    assert isinstance(value, str)
    try:
        return validate_channel(value)
    except ValueError as exc:
        raise src.err(str(exc)) from None


def _track(value: object, src: _Src) -> str:
    _expect(value, str, "a track name", src)
    assert isinstance(value, str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", value):
        raise src.err(f"bad track {value!r} (lowercase letters, digits, . _ -)")
    return value


def _version(value: object, src: _Src) -> str:
    _expect(value, str, "a version string", src)
    assert isinstance(value, str)
    try:
        return validate_version(value)
    except ValueError as exc:
        raise src.err(str(exc)) from None


def _env(value: object, src: _Src) -> dict[str, str]:
    _expect(value, dict, "a table of strings", src)
    assert isinstance(value, dict)
    for k, v in value.items():
        if not isinstance(v, str) or not k or "=" in k:
            raise src.err(f"bad entry {k!r}: names without '=', string values")
    return dict(value)
