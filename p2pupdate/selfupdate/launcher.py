"""The stable launcher of a managed install: count the boot, roll back past the bound, exec.

``p2pupdate self install`` copies this file into the install as
``DIR/lib/launcher/p2pupdate_launcher.py`` (with :mod:`p2pupdate.core.boot`
beside it as ``p2pupdate_boot.py``) and writes ``DIR/bin/p2pupdate``, a stub
that imports it and calls :func:`main`. Updates never replace these files.

It runs under the base interpreter, before any release's venv is trusted, so
a release that cannot even import is still counted and rolled back: this
module imports only the standard library and the boot decisions
(``tests/selfupdate/test_launcher.py`` runs the copy with an interpreter that
cannot import p2pupdate). The decisions are in :mod:`p2pupdate.core.boot`;
this module does the file work, in the formats
:mod:`p2pupdate.selfupdate.install` reads (it uses the quarantine functions
here, so the install has one quarantine store).

For ``node``: counts this boot per node and release (persisted before the
release runs), switches ``current`` back to ``previous`` past the bound
(quarantining the release), then execs ``DIR/releases/<v>/bin/p2pupdate``.
Any other command just execs the release.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from p2pupdate.core import boot
else:  # the copy in DIR/lib/launcher/, next to p2pupdate_boot.py
    import p2pupdate_boot as boot

__all__ = [
    "BOOT_MODULE",
    "MODULE",
    "STUB_MARK",
    "add_quarantine",
    "clear_quarantine",
    "data_dir_of",
    "main",
    "quarantine_list",
    "read_json",
    "stub",
]

# The names the install's copies have (DIR/lib/launcher/).
MODULE = "p2pupdate_launcher"
BOOT_MODULE = "p2pupdate_boot"
STUB_MARK = "# p2pupdate stable launcher"
NODE_KEY_ENV = "P2PUPDATE_NODE_KEY"
LAUNCHER_ENV = "P2PUPDATE_LAUNCHER"
# State files are tiny; a huge one is corrupt and read only this far (then fails to parse).
_MAX_STATE = 256 * 1024  # = config.Limits.max_selfupdate_state (this module cannot import it)
# A boot decides at most this many times: the bound rolls back to ``previous``, which is
# then counted; a third round would mean the state changed under us, so start as it is.
_ROUNDS = 3


def stub(python: str) -> str:
    """The text of ``DIR/bin/p2pupdate``: run :func:`main` of the copied module."""
    return (
        f"#!{python}\n"
        f"{STUB_MARK} (written by `p2pupdate self install`; updates never replace it).\n"
        "import os, sys\n"
        "sys.dont_write_bytecode = True\n"
        "_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
        'sys.path.insert(0, os.path.join(_root, "lib", "launcher"))\n'
        f"import {MODULE}\n"
        f"sys.exit({MODULE}.main(os.path.abspath(__file__), sys.argv[1:]))\n"
    )


def _say(msg: str) -> None:
    sys.stderr.write(f"p2pupdate launcher: {msg}\n")
    sys.stderr.flush()


def _state(root: str) -> str:
    return os.path.join(root, "state")


def history(root: str, line: str) -> None:
    """Append one line to ``state/history.log`` (one O_APPEND write: lines never mix)."""
    os.makedirs(_state(root), exist_ok=True)
    path = os.path.join(_state(root), "history.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{time.time():.3f} {line}\n".encode())
    finally:
        os.close(fd)


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when missing, unreadable, corrupt or not an object."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read(_MAX_STATE).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_json(path: str, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def link(root: str, name: str) -> str | None:
    """The release ``DIR/<name>`` points at (``releases/<v>``); None if not such a link."""
    try:
        dest = os.readlink(os.path.join(root, name))
    except OSError:
        return None
    parts = dest.split("/")
    return parts[1] if len(parts) == 2 and parts[0] == "releases" and parts[1] else None


def complete(root: str, release: str) -> bool:
    """Whether ``release`` is whole: its completion marker and its program exist."""
    base = os.path.join(root, "releases", release)
    program = os.path.join(base, "bin", "p2pupdate")
    return os.path.isfile(base + ".complete") and os.path.exists(program)


def _lock(root: str, name: str) -> int:
    os.makedirs(_state(root), exist_ok=True)
    fd = os.open(os.path.join(_state(root), name), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


# ---------------------------------------------------------------- the quarantine store


def _quarantine_path(root: str) -> str:
    return os.path.join(_state(root), "quarantine.json")


def quarantine_list(root: str) -> list[dict[str, Any]]:
    """The quarantine entries (``version``, ``reason``, ``node``, ``at``), oldest first."""
    return boot.quarantine_entries(read_json(_quarantine_path(root)))


def add_quarantine(root: str, version: str, reason: str, node: str) -> None:
    """Quarantine ``version`` for every node of the install (under ``quarantine.lock``)."""
    fd = _lock(root, "quarantine.lock")
    try:
        path = _quarantine_path(root)
        new = boot.add_quarantine(read_json(path), version, reason, node, time.time())
        if new is not None:
            write_json(path, new)
    finally:
        os.close(fd)


def clear_quarantine(root: str, version: str) -> bool:
    """Lift the quarantine of ``version``; False if it was not quarantined."""
    fd = _lock(root, "quarantine.lock")
    try:
        path = _quarantine_path(root)
        new = boot.remove_quarantine(read_json(path), version)
        if new is None:
            return False
        write_json(path, new)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- a node's boot


def data_dir_of(args: list[str]) -> str:
    """The data dir a ``node`` command line names (``--data-dir``, else ``data_dir`` of its
    ``--config`` relative to the config file); ``default`` when neither says."""
    for i, a in enumerate(args):
        if a == "--data-dir" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--data-dir="):
            return a.split("=", 1)[1]
    for i, a in enumerate(args):
        cfg = None
        if a == "--config" and i + 1 < len(args):
            cfg = args[i + 1]
        elif a.startswith("--config="):
            cfg = a.split("=", 1)[1]
        if cfg:
            try:
                import tomllib

                with open(cfg, "rb") as f:
                    d = tomllib.load(f).get("data_dir")
                if isinstance(d, str):
                    base = os.path.dirname(os.path.abspath(cfg))
                    return os.path.join(base, os.path.expanduser(d))
            except (OSError, ValueError):
                pass
    return "default"


def _switch_current(root: str, release: str, to: str) -> None:
    """Point ``current`` at ``to`` if it still names ``release`` (under ``install.lock``)."""
    fd = _lock(root, "install.lock")
    try:
        if link(root, "current") == release:
            tmp = os.path.join(root, f".current.{os.getpid()}.link")
            os.symlink("releases/" + to, tmp)
            os.replace(tmp, os.path.join(root, "current"))
            _fsync_dir(root)
    finally:
        os.close(fd)


def _roll_back(root: str, release: str, key: str, record: dict[str, Any], restore: bool) -> str:
    """Past the bound: quarantine ``release``; go back to ``previous`` when ``restore``.

    Returns the release to start now (``release`` itself when giving up).
    """
    add_quarantine(root, release, boot.TOO_MANY_ATTEMPTS, key)
    entry = record["releases"][release]
    previous = link(root, "previous")
    if not restore or previous is None:
        record["rolled_back"] = {"version": release, "restored": None, "at": time.time()}
        entry["gave_up"] = True
        _say(
            f"release {release} failed {entry['attempts']} boots and is quarantined; there is "
            "nothing to roll back to (no good previous release); it is left in place and "
            "started as it is"
        )
        history(root, f"rollback-impossible {release} node={key}")
        return release
    _switch_current(root, release, previous)
    record["rolled_back"] = {"version": release, "restored": previous, "at": time.time()}
    _say(
        f"release {release} failed {entry['attempts']} boots: quarantined, current switched "
        f"back to {previous}"
    )
    history(root, f"rollback {release} -> {previous} node={key}")
    return link(root, "current") or previous


def _count_boot(root: str, release: str, key: str) -> tuple[str, object]:
    """Count this node's boot (see :func:`p2pupdate.core.boot.boot_decision`).

    Returns the release to start and this node's attempt count of it.
    """
    path = os.path.join(_state(root), "boots", key + ".json")
    record = read_json(path)
    if not isinstance(record.get("releases"), dict):
        record["releases"] = {}
    bound = boot.boot_bound(record)
    for _ in range(_ROUNDS):
        quarantined = [e["version"] for e in quarantine_list(root)]
        previous = link(root, "previous")
        good = boot.previous_is_good(
            release,
            previous,
            previous is not None and complete(root, previous),
            quarantined,
        )
        decision = boot.boot_decision(boot.boot_entry(record, release), bound, good)
        if not isinstance(record["releases"].get(release), dict):
            record["releases"][release] = {"attempts": 0, "confirmed": False}
        if isinstance(decision, boot.BootStart):
            break
        if isinstance(decision, boot.BootRollBack):
            new = _roll_back(root, release, key, record, decision.restore)
            write_json(path, record)
            if new == release:
                break
            release = new
            continue
        record["releases"][release]["attempts"] = decision.attempt
        write_json(path, record)  # counted before the release's code can fail
        break
    return release, record["releases"][release].get("attempts")


def main(launcher: str, args: list[str]) -> int:
    """Run ``args`` with the install's release (``launcher`` is ``DIR/bin/p2pupdate``).

    Returns only on failure (1: no runnable release); else the release replaces
    this process.
    """
    root = os.path.dirname(os.path.dirname(launcher))
    current = link(root, "current")
    previous = link(root, "previous")
    release = boot.choose_release(
        current,
        current is not None and complete(root, current),
        previous,
        previous is not None and complete(root, previous),
    )
    if release is None:
        _say(f"no runnable release in {root} (current -> {current!r})")
        return 1
    if release != current:
        _say(
            f"current release {current!r} is missing or incomplete; running the previous one, "
            f"{release}"
        )
    env = dict(os.environ)
    env[LAUNCHER_ENV] = launcher
    if args[:1] == ["node"]:
        key = boot.node_key_of(os.path.abspath(data_dir_of(args)))
        release, attempt = _count_boot(root, release, key)
        env[NODE_KEY_ENV] = key
        history(root, f"boot {release} node={key} pid={os.getpid()} attempt={attempt}")
    program = os.path.join(root, "releases", release, "bin", "p2pupdate")
    sys.stdout.flush()
    os.execve(program, [program, *args], env)
