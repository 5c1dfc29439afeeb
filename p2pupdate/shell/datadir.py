"""Where a node keeps its state when no ``--data-dir`` is given.

Every command that needs a node's data dir (``node`` and the control commands
``status``, ``apply``, ``rollback``, ``quarantine``) looks in this order:

1. ``--data-dir DIR`` on the command line;
2. ``data_dir`` in the file given with ``--config FILE`` (relative to the file);
3. the environment variable ``P2PUPDATE_DATA_DIR``;
4. the platform default: ``/var/lib/p2pupdate`` when running as root (what a
   systemd ``StateDirectory=p2pupdate`` gives), otherwise
   ``$XDG_STATE_HOME/p2pupdate`` (``~/.local/state/p2pupdate`` when unset).

So a node started by the shipped systemd unit and ``p2pupdate status`` typed on
the same host meet without any flag. This module only decides the path; it
does not create or check the directory (the commands do, with their own
messages).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DATA_DIR_ENV",
    "ROOT_DATA_DIR",
    "announcement_path",
    "announcements_dir",
    "default_data_dir",
    "resolve_data_dir",
    "store_dir",
    "xdg_state_home",
]

DATA_DIR_ENV = "P2PUPDATE_DATA_DIR"
ROOT_DATA_DIR = Path("/var/lib/p2pupdate")


def default_data_dir(euid: int, env: Mapping[str, str]) -> Path:
    """The platform default for a user id and an environment."""
    if euid == 0:
        return ROOT_DATA_DIR
    return xdg_state_home(env) / "p2pupdate"


def xdg_state_home(env: Mapping[str, str]) -> Path:
    """The user's state directory: ``$XDG_STATE_HOME``, else ``~/.local/state``."""
    state = env.get("XDG_STATE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    if state and Path(state).is_absolute():
        return Path(state)
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state"


def resolve_data_dir(
    flag: Path | None,
    from_config: Path | None,
    env: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> tuple[Path, str]:
    """The data dir and where it came from (a label for error messages)."""
    environ = os.environ if env is None else env
    if flag is not None:
        return flag, "--data-dir"
    if from_config is not None:
        return from_config, "data_dir"
    value = environ.get(DATA_DIR_ENV, "")
    if value:
        return Path(value).expanduser().absolute(), DATA_DIR_ENV
    uid = os.geteuid() if euid is None else euid
    return default_data_dir(uid, environ), "the default data dir"


def store_dir(data_dir: Path) -> Path:
    """Where a node's package store (partial downloads, cache, tables) lives."""
    return data_dir / "store"


def announcements_dir(data_dir: Path) -> Path:
    """Where a node keeps the newest announcement of each channel it accepted."""
    return data_dir / "announcements"


def announcement_path(data_dir: Path, channel: str) -> Path:
    """The file holding a channel's newest accepted announcement (``/`` becomes ``+``)."""
    return announcements_dir(data_dir) / (channel.replace("/", "+") + ".ann")
