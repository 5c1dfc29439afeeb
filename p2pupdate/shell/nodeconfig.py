"""Settings of ``p2pupdate node``: a TOML config file (``--config``) merged with flags.

:func:`load_settings` turns the parsed command line, plus the config file it
names, into one frozen :class:`NodeSettings`, and raises :class:`UsageError`
with one line naming the flag or key for every mistake a person can make:
an unknown key, a wrong type, a missing ``data_dir`` or ``listen``, a bad
HOST:PORT, size, rate, duration, public key or channel name, no trusted key
at all, a data dir that cannot be created or written, a config file that is
missing or not TOML.

Merging rules (flags override the file):

* Scalar settings: a flag that is given wins over the config key.
* ``--peer`` and ``--trust`` add to ``peers`` / ``trust`` from the file
  (duplicates dropped, order kept).
* ``--target CHANNEL=PATH`` for a channel the file also defines replaces that
  target's path (and whether it is a directory) and keeps its other settings
  (health and restart commands, version, ...); for a new channel it adds a
  target. ``--health-cmd CHANNEL=CMD`` replaces the health command of a target
  defined by the file or by ``--target``; naming no target is an error.
* A target given only with ``--target`` is applied automatically
  (``auto_apply = true``, whatever the global setting, as docs/operations.md says); a
  target the file defines takes its ``auto_apply`` from its table, else from the
  global ``auto_apply`` (default true).
* A target is a directory target when its path ends in ``/``, when it is an
  existing directory, or when the config says ``is_dir = true``.
* Relative paths are relative to the current directory on the command line
  and to the config file's directory inside it; ``~`` is expanded in the file.

Config keys are the :class:`NodeSettings` field names. Flags: ``--data-dir``,
``--listen``, ``--peer``, ``--trust``, ``--trust-threshold``, ``--target``,
``--health-cmd``, ``--upload-limit`` (``max_upload_speed``),
``--download-limit`` (``max_download_speed``), ``--cache-size``, ``--events``,
``--events-max-size``,
``--check-interval``, ``--log-level``, ``--log-json``. Any other field is read
from ``args`` too when the parser has an attribute of that name that is not
None (so a flag added later needs no change here), except ``control_socket``,
which is config-only. Targets in the file are either an array of tables, each
with a ``channel``, or a table keyed by channel::

    [targets."app/stable"]
    path = "/opt/app/bin/app"
    health_cmd = "/opt/app/bin/app --self-test"   # a string (split like a shell) or an array
    restart_cmd = ["systemctl", "restart", "app"]
    auto_apply = false
    version = "1.3.0"        # installed before p2pupdate
    health_timeout = 30      # seconds
    confirm_window = 60      # seconds
    max_attempts = 3
    env = { APP_ENV = "prod" }

The value converters (one key or flag in, a checked value out) are in
:mod:`p2pupdate.shell.configvalues`; this module merges. :func:`parse_hostport`
and :func:`format_hostport` are re-exported from there. It does not start
anything; the node does.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.errors import UsageError
from p2pupdate.shell.configvalues import (
    T,
    _bool,
    _channel,
    _command,
    _duration,
    _env,
    _expect,
    _hostport,
    _int_at_least,
    _list_of,
    _log_level,
    _path,
    _peer,
    _pubkey,
    _rate,
    _size,
    _Src,
    _track,
    _version,
    format_hostport,
    parse_hostport,
)
from p2pupdate.shell.datadir import resolve_data_dir
from p2pupdate.shell.fleetfiles import load_admission, load_revocations
from p2pupdate.shell.fsutil import read_bytes_limited
from p2pupdate.shell.install.applicator import TargetSpec

__all__ = [
    "CONFIG_KEYS",
    "TARGET_KEYS",
    "NodeSettings",
    "config_data_dir",
    "format_hostport",
    "load_settings",
    "parse_hostport",
]

MiB = 1024**2
GiB = 1024**3
MiB = 1024**2
_MAX_CONFIG = DEFAULT_LIMITS.max_config_file  # Limits says why
_UNSET_BACKUP = Path("<data_dir>/backups")


@dataclass(frozen=True)
class NodeSettings:
    """Everything ``p2pupdate node`` is configured with, validated."""

    data_dir: Path
    listen: tuple[str, int]
    peers: tuple[tuple[str, int], ...] = ()
    trust: frozenset[bytes] = frozenset()
    trust_threshold: int = 1
    targets: tuple[TargetSpec, ...] = ()
    max_upload_speed: int = 0  # bytes/s, 0 = unlimited
    max_download_speed: int = 0  # bytes/s, 0 = unlimited
    cache_size: int = 1 * GiB  # bytes; pinned packages may exceed it
    events: Path | None = None
    # The events file is rotated to FILE.1 when it would grow past this (0: never):
    # a peer flood must not fill the disk. One old file is kept.
    events_max_size: int = 64 * MiB
    # Serve Prometheus metrics on this address (None: off, the default).
    metrics_listen: tuple[str, int] | None = None
    # Node reports: heartbeat period and how many reports (one per node) are kept.
    report_interval: float = DEFAULT_LIMITS.report_interval
    max_reports: int = DEFAULT_LIMITS.max_reports
    auto_check: bool = True  # periodic anti-entropy pulls
    check_interval: float = 30.0  # seconds between anti-entropy rounds
    auto_download: bool = True
    auto_apply: bool = True  # default of every target's auto_apply
    backup_dir: Path = _UNSET_BACKUP  # default: data_dir / "backups"
    max_package_size: int = 4 * GiB
    max_connections: int = 64
    target_connections: int = 8  # peers the node dials on its own
    boot_attempts: int = 3  # starts of a new own release before the launcher reverts
    confirm_window: float = 30.0  # seconds a new own release must stay healthy
    self_update: bool = True  # follow the own release channel (only in a managed install)
    self_update_track: str = "stable"  # channel p2pupdate/<track>/<python>-<platform>
    self_update_wait: float = 60.0  # seconds the installing node waits for the others
    ban_period: float = 600.0
    # A failed download or install step that can pass (full disk, disk error, sources
    # gone) is tried again after retry_min seconds, doubling up to retry_max.
    retry_min: float = 30.0
    retry_max: float = 1800.0
    # Free space a download leaves on the data dir's filesystem beyond the package.
    min_free_space: int = 64 * MiB
    # Longest announcement validity (expires - created) accepted: Limits.max_validity.
    max_announcement_validity: float = float(DEFAULT_LIMITS.max_validity)
    # Fleet membership (docs/security.md): fleet public keys (empty: an open swarm),
    # this node's admission certificate, a revocation list to start with, and TLS
    # (None: on exactly when fleet is set).
    fleet: frozenset[bytes] = frozenset()
    admission: Path | None = None
    revocations: Path | None = None
    encrypt: bool | None = None
    log_level: str = "info"
    log_json: bool = False
    control_socket: Path | None = None  # None: DATA_DIR/control.sock or a runtime dir

    def __post_init__(self) -> None:
        if self.backup_dir is _UNSET_BACKUP:
            object.__setattr__(self, "backup_dir", self.data_dir / "backups")


CONFIG_KEYS = frozenset(NodeSettings.__dataclass_fields__)
TARGET_KEYS = frozenset(
    {
        "channel",
        "path",
        "is_dir",
        "health_cmd",
        "restart_cmd",
        "auto_apply",
        "version",
        "health_timeout",
        "confirm_window",
        "max_attempts",
        "env",
    }
)

# Scalar settings: key -> (converter, the flag that sets it or None: config-only so far).
_SCALARS: dict[str, tuple[Callable[[object, _Src], Any], str | None]] = {
    "trust_threshold": (_int_at_least(1), "--trust-threshold"),
    "max_upload_speed": (_rate, "--upload-limit"),
    "max_download_speed": (_rate, "--download-limit"),
    "cache_size": (_size, "--cache-size"),
    "events": (_path, "--events"),
    "events_max_size": (_size, "--events-max-size"),
    "metrics_listen": (_hostport, "--metrics-listen"),
    "report_interval": (_duration, None),
    "max_reports": (_int_at_least(1), None),
    "auto_check": (_bool, None),
    "check_interval": (_duration, "--check-interval"),
    "auto_download": (_bool, None),
    "auto_apply": (_bool, None),
    "backup_dir": (_path, None),
    "max_package_size": (_size, None),
    "max_connections": (_int_at_least(1), None),
    "target_connections": (_int_at_least(1), None),
    "boot_attempts": (_int_at_least(1), None),
    "confirm_window": (_duration, None),
    "self_update": (_bool, None),
    "self_update_track": (_track, None),
    "self_update_wait": (_duration, None),
    "ban_period": (_duration, None),
    "retry_min": (_duration, None),
    "retry_max": (_duration, None),
    "min_free_space": (_size, None),
    "max_announcement_validity": (_duration, None),
    "admission": (_path, "--admission"),
    "revocations": (_path, "--revocations"),
    "encrypt": (_bool, "--encrypt"),
    "log_level": (_log_level, "--log-level"),
    "log_json": (_bool, "--log-json"),
    "control_socket": (_path, None),
}
# args attribute names that differ from the config key.
_ATTR = {"max_upload_speed": "upload_limit", "max_download_speed": "download_limit"}
_CONFIG_ONLY = frozenset({"control_socket"})


# ---------------------------------------------------------------- loading


def _read_config(path: Path) -> dict[str, Any]:
    where = f"--config {path}"
    try:
        data = read_bytes_limited(path, _MAX_CONFIG)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{where}: is a directory, not a config file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{where}: larger than {_MAX_CONFIG} bytes; not a config file") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None


def _unknown_key(key: str, known: frozenset[str], where: str) -> UsageError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{where}: unknown key {key!r}{hint}")


class _Loader:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cwd = Path.cwd()
        config: Path | None = getattr(args, "config", None)
        self.file: dict[str, Any] = {}
        self.base = self.cwd
        self.label = "config"
        if config is not None:
            self.file = _read_config(config)
            self.base = config.absolute().parent
            self.label = f"config {config}"
            for key in self.file:
                if key not in CONFIG_KEYS:
                    raise _unknown_key(key, CONFIG_KEYS, self.label)

    def key_src(self, key: str) -> _Src:
        return _Src(f"{self.label}: {key}", self.base)

    def flag(self, key: str) -> tuple[Any, _Src] | None:
        """The flag value for a config key, if the command line gave one."""
        if key in _CONFIG_ONLY:
            return None
        attr = _ATTR.get(key, key)
        value = getattr(self.args, attr, None)
        if value is None or (value is False and key == "log_json"):
            return None
        label = _SCALARS[key][1] if key in _SCALARS else None
        return value, _Src(label or "--" + attr.replace("_", "-"), self.cwd)

    def scalar(self, key: str) -> Any:
        conv = _SCALARS[key][0]
        given = self.flag(key)
        if given is not None:
            return conv(given[0], given[1])
        if key in self.file:
            return conv(self.file[key], self.key_src(key))
        return NodeSettings.__dataclass_fields__[key].default

    def required(self, key: str, flag: str, conv: Callable[[object, _Src], T]) -> T:
        value = getattr(self.args, key, None)
        if value is not None:
            return conv(value, _Src(flag, self.cwd))
        if key in self.file:
            return conv(self.file[key], self.key_src(key))
        raise UsageError(f"{flag} is required (or {key} in the config file)")

    def listed(self, key: str, flag: str, item: Callable[[object, _Src], T]) -> list[T]:
        out: list[T] = []
        if key in self.file:
            out += _list_of(item)(self.file[key], self.key_src(key))
        for value in getattr(self.args, flag.lstrip("-").replace("-", "_"), None) or []:
            out.append(item(value, _Src(flag, self.cwd)))
        return list(dict.fromkeys(out))


def _prepare_data_dir(path: Path, where: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{where} {path}: exists and is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{where} {path}: cannot create it: {exc.strerror}") from None
    # os.access says yes to root everywhere; creating a file is the real test.
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
    except OSError as exc:
        raise UsageError(f"{where} {path}: not writable: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def _data_dir(ld: _Loader) -> tuple[Path, str]:
    flag = getattr(ld.args, "data_dir", None)
    given = _path(flag, _Src("--data-dir", ld.cwd)) if flag is not None else None
    in_file = _path(ld.file["data_dir"], ld.key_src("data_dir")) if "data_dir" in ld.file else None
    return resolve_data_dir(given, in_file)


def config_data_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """The data dir for a control command: ``--data-dir``, ``--config``'s, env, default.

    The config file is read and checked like the node's own (unknown keys are
    mistakes), so ``p2pupdate status --config /etc/p2pupdate/node.toml`` finds
    the node that config runs.
    """
    return _data_dir(_Loader(args))


def load_settings(args: argparse.Namespace) -> NodeSettings:
    """Merge ``--config`` and flags into validated settings (rules in the module doc)."""
    ld = _Loader(args)
    data_dir, where_dir = _data_dir(ld)
    listen = ld.required("listen", "--listen", _hostport)
    peers = ld.listed("peers", "--peer", _peer)
    trust = ld.listed("trust", "--trust", _pubkey)
    if not trust:
        raise UsageError(
            "no trusted key: give --trust PUBKEY (the publisher's `p2pupdate pubkey` line) "
            "or trust = [...] in the config file"
        )
    fleet = ld.listed("fleet", "--fleet", _pubkey)
    values = {key: ld.scalar(key) for key in _SCALARS}
    _check_fleet(fleet, values)
    if values["trust_threshold"] > len(trust):
        raise UsageError(
            f"trust_threshold {values['trust_threshold']} is more than the "
            f"{len(trust)} trusted key(s)"
        )
    if values["target_connections"] > values["max_connections"]:
        raise UsageError(
            f"target_connections {values['target_connections']} is more than "
            f"max_connections {values['max_connections']}"
        )
    if values["retry_max"] < values["retry_min"]:
        raise UsageError(
            f"retry_max {values['retry_max']:g}s is less than retry_min {values['retry_min']:g}s"
        )
    if values["max_package_size"] <= 0:
        raise UsageError("max_package_size must be positive")
    _prepare_data_dir(data_dir, where_dir)
    events = values["events"]
    if events is not None and not events.parent.is_dir():
        raise UsageError(f"events {events}: directory {events.parent} does not exist")
    if values["backup_dir"] is _UNSET_BACKUP:
        values["backup_dir"] = data_dir / "backups"
    if values["backup_dir"].exists() and not values["backup_dir"].is_dir():
        raise UsageError(f"backup_dir {values['backup_dir']}: exists and is not a directory")
    targets = _load_targets(ld, default_auto_apply=values["auto_apply"])
    return NodeSettings(
        data_dir=data_dir,
        listen=listen,
        peers=tuple(peers),
        trust=frozenset(trust),
        fleet=frozenset(fleet),
        targets=targets,
        **values,
    )


def _check_fleet(fleet: list[bytes], values: dict[str, Any]) -> None:
    """Membership needs an admission from one of the fleet keys; files are checked now
    (form and signature) so a wrong file is a start-up error, not a silent refusal."""
    admission, revocations = values["admission"], values["revocations"]
    if not fleet:
        if admission is not None or revocations is not None:
            raise UsageError("admission and revocations need fleet keys (--fleet PUBKEY)")
        return
    if admission is None:
        raise UsageError(
            "--fleet needs this node's admission certificate: --admission FILE "
            "(made with p2pupdate admit), or admission in the config file"
        )
    adm = load_admission(admission)
    if adm.fleet_key not in fleet:
        raise UsageError(
            f"admission certificate {admission}: signed by a fleet key not given with --fleet"
        )
    if revocations is not None and load_revocations(revocations).fleet_key not in fleet:
        raise UsageError(f"revocation list {revocations}: signed by a fleet key not in --fleet")


# ---------------------------------------------------------------- targets


def _target_tables(ld: _Loader) -> list[tuple[str, dict[str, Any], _Src]]:
    """(channel, raw table, source) for each target in the config file."""
    if "targets" not in ld.file:
        return []
    raw = ld.file["targets"]
    src = ld.key_src("targets")
    out: list[tuple[str, dict[str, Any], _Src]] = []
    if isinstance(raw, dict):
        for channel, table in raw.items():
            tsrc = _Src(f"{ld.label}: targets.{channel!r}", ld.base)
            _expect(table, dict, "a table", tsrc)
            if "channel" in table and table["channel"] != channel:
                raise tsrc.err(f"channel = {table['channel']!r} differs from the table name")
            out.append((_channel(channel, tsrc), table, tsrc))
        return out
    _expect(raw, list, "an array of tables or a table keyed by channel", src)
    assert isinstance(raw, list)
    for i, table in enumerate(raw):
        tsrc = _Src(f"{ld.label}: targets[{i}]", ld.base)
        _expect(table, dict, "a table", tsrc)
        if "channel" not in table:
            raise tsrc.err("channel is required")
        channel = _channel(table["channel"], _Src(f"{tsrc.where}.channel", ld.base))
        out.append((channel, table, _Src(f"{ld.label}: targets.{channel!r}", ld.base)))
    return out


def _split_assignment(value: object, flag: str, what: str) -> tuple[str, str, _Src]:
    src = _Src(f"{flag} {value}", Path.cwd())
    if not isinstance(value, str) or "=" not in value:
        raise src.err(f"expected CHANNEL={what}")
    channel, _, rest = value.partition("=")
    if not rest:
        raise src.err(f"missing {what} after '='")
    return _channel(channel, src), rest, src


def _load_targets(ld: _Loader, *, default_auto_apply: bool) -> tuple[TargetSpec, ...]:
    specs: dict[str, dict[str, Any]] = {}
    sources: dict[str, _Src] = {}
    for channel, table, src in _target_tables(ld):
        if channel in specs:
            raise src.err("the same channel is defined twice")
        fields: dict[str, Any] = {}
        for key, value in table.items():
            ksrc = _Src(f"{src.where}.{key}", src.base)
            if key not in TARGET_KEYS:
                raise _unknown_key(key, TARGET_KEYS, src.where)
            if key == "channel":
                continue
            if key == "path":
                _expect(value, str, "a path", ksrc)
                fields["path"] = _path(value, ksrc)
                fields["slash"] = value.endswith("/")
            else:
                fields[key] = _TARGET_CONVERTERS[key](value, ksrc)
        if "path" not in fields:
            raise src.err("path is required")
        specs[channel] = fields
        sources[channel] = src

    for value in getattr(ld.args, "target", None) or []:
        channel, text, src = _split_assignment(value, "--target", "PATH")
        if channel not in specs:
            # docs/operations.md: a target given on the command line is applied automatically.
            specs[channel] = {"auto_apply": True}
        fields = specs[channel]
        fields["path"] = _path(text, src)
        fields["slash"] = text.endswith("/")
        fields.pop("is_dir", None)
        sources[channel] = src

    for value in getattr(ld.args, "health_cmd", None) or []:
        channel, text, src = _split_assignment(value, "--health-cmd", "CMD")
        if channel not in specs:
            raise src.err(f"no target for channel {channel!r} (add --target {channel}=PATH)")
        specs[channel]["health_cmd"] = _command(text, src)

    out: list[TargetSpec] = []
    seen_paths: dict[Path, str] = {}
    for channel, fields in specs.items():
        src = sources[channel]
        path: Path = fields.pop("path")
        slash = fields.pop("slash")
        is_dir = _target_kind(path, slash, fields.pop("is_dir", None), src)
        if path in seen_paths:
            raise src.err(f"path {path} is also the target of {seen_paths[path]!r}")
        seen_paths[path] = channel
        fields.setdefault("auto_apply", default_auto_apply)
        out.append(TargetSpec(channel=channel, path=path, is_dir=is_dir, **fields))
    return tuple(out)


def _target_kind(path: Path, slash: bool, is_dir: bool | None, src: _Src) -> bool:
    if not path.parent.is_dir():
        raise src.err(f"directory {path.parent} does not exist")
    exists_dir = path.is_dir()
    if is_dir is False and (slash or exists_dir):
        raise src.err(f"{path} is a directory but is_dir = false")
    if (is_dir or slash) and path.exists() and not exists_dir:
        raise src.err(f"{path} is a file, not a directory")
    return bool(is_dir or slash or exists_dir)


_TARGET_CONVERTERS: dict[str, Callable[[object, _Src], Any]] = {
    "is_dir": _bool,
    "health_cmd": _command,
    "restart_cmd": _command,
    "auto_apply": _bool,
    "version": _version,
    "health_timeout": _duration,
    "confirm_window": _duration,
    "max_attempts": _int_at_least(1),
    "env": _env,
}
