"""Targets and the durable file operations behind an install: stage, swap, back
up, restore, switch a symlink (unpacking a directory target's release is in
:mod:`p2pupdate.shell.install.unpack`).

:class:`TargetSpec` describes one target (a file, or a directory made live by a
symlink to a release directory beside it); :func:`plan_install` names the
backup and release of one install before anything is touched.

Every function here is synchronous and blocking: the applicator runs the long
ones (copying, hashing, unpacking) in a worker thread and passes
``trio.from_thread.check_cancelled`` as ``check`` so a cancelled install
stops between blocks. Nothing here decides what to install or when; see
:mod:`p2pupdate.core.apply` for that.

Crash safety rests on one pattern: new bytes go to a uniquely named file in
the *destination's own directory*, are fsynced, and only then renamed over
the destination, after which the directory is fsynced. A kill -9 at any
point leaves the old complete file or the new complete file.

Crash points (``fault(...)``) come from :mod:`p2pupdate.shell.faults`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p2pupdate.core.apply import (
    INSTALL_FAILED,
    ROLLBACK_FAILED,
)
from p2pupdate.errors import ApplyError
from p2pupdate.shell.faults import fault
from p2pupdate.shell.filehash import hash_file, no_check
from p2pupdate.shell.fsutil import check_free_space, fsync_dir, fsync_path
from p2pupdate.shell.install.applystate import Pending, validate_channel

__all__ = [
    "InstallPlan",
    "TargetSpec",
    "backup_file",
    "check_free_space",  # re-exported: the disk layer the applicator (and tests) go through
    "cleanup_backup_leftovers",
    "cleanup_leftovers",
    "command_env",
    "copy_to_staging",
    "hash_file",
    "inside",
    "install_staged",
    "make_symlink_live",
    "no_check",
    "plan_install",
    "prepare_file_install",
    "prepare_releases",
    "read_live_release",
    "releases_dir",
    "remove_path",
    "remove_tree",
    "resolve_file_target",
    "resolved_target",
    "restore_file",
    "restore_quick",
    "staging_path",
    "version_label",
]


@dataclass(frozen=True)
class TargetSpec:
    """One thing the node installs: a file, or a directory target (``DIR/`` on the CLI)."""

    channel: str
    path: Path
    is_dir: bool = False
    # argv, no shell; None: run an executable file target with --version, else hash only.
    health_cmd: list[str] | None = None
    restart_cmd: list[str] | None = None
    auto_apply: bool = True
    # Version of a program that was there before p2pupdate (None: unknown).
    version: str | None = None
    health_timeout: float = 30.0
    confirm_window: float = 60.0
    max_attempts: int = 3
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_channel(self.channel)
        if self.health_timeout <= 0 or self.confirm_window <= 0:
            raise ValueError("health_timeout and confirm_window must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


def command_env(target: TargetSpec, version: str | None) -> dict[str, str]:
    """Environment additions for a target's health and restart commands."""
    return {
        **target.env,
        "P2PUPDATE_CHANNEL": target.channel,
        "P2PUPDATE_VERSION": version or "",
    }


def resolved_target(target: TargetSpec) -> TargetSpec:
    """``target`` with a symlinked file target replaced by the file it points to."""
    if target.is_dir:
        return target
    path = resolve_file_target(target.path)
    return target if path == target.path else dataclasses.replace(target, path=path)


def staging_path(target: Path, kind: str = "staging") -> Path:
    """A unique hidden name beside ``target``, on the same filesystem."""
    return target.with_name(f".{target.name}.p2pupdate-{secrets.token_hex(6)}.{kind}")


def cleanup_leftovers(target: Path) -> list[Path]:
    """Remove staging files and temporary links a killed install left beside ``target``."""
    removed: list[Path] = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    prefix = f".{target.name}.p2pupdate-"
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith((".staging", ".link")):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


_BACKUP_STAGING_RE = re.compile(r"\..+\.p2pupdate-[0-9a-f]{12}\.staging")


def cleanup_backup_leftovers(backup_dir: Path) -> list[Path]:
    """Remove the staging files of backups a killed install left in ``backup_dir``.

    A backup is linked or copied to ``.<name>.p2pupdate-<token>.staging`` in its channel's
    directory under ``backup_dir`` and renamed when complete; a kill in between
    leaves the staging file (as large as the target). Only names of exactly that
    form are removed; finished backups and anything else stay.
    """
    removed: list[Path] = []
    if not backup_dir.is_dir() or backup_dir.is_symlink():
        return removed
    for channel_dir in backup_dir.iterdir():
        if not channel_dir.is_dir() or channel_dir.is_symlink():
            continue
        for entry in channel_dir.iterdir():
            if _BACKUP_STAGING_RE.fullmatch(entry.name) and not entry.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def copy_to_staging(
    source: Path,
    dest: Path,
    mode: int,
    *,
    owner: tuple[int, int] | None = None,
    check: Callable[[], None] = no_check,
    fault_mid: str | None = None,
) -> tuple[Path, bytes]:
    """Copy ``source`` to a new staging file beside ``dest``; fsync; return it and its hash.

    The staging file gets ``mode`` (and ``owner`` when given). On any error or
    cancellation the staging file is removed.
    """
    tmp = staging_path(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(block: memoryview, offset: int) -> None:
        out = block
        while out:
            written = os.write(fd, out)
            out = out[written:]
        if offset == 0 and fault_mid is not None:
            os.fsync(fd)
            fault(fault_mid)

    try:
        try:
            digest, _ = hash_file(source, check, write)
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest


def install_staged(staging: Path, dest: Path) -> None:
    """Rename a fsynced staging file over ``dest`` and make the rename durable."""
    os.replace(staging, dest)
    fsync_dir(dest.parent)


def _mode_and_owner(path: Path, default_mode: int) -> tuple[int, tuple[int, int] | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return default_mode, None
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    return stat.S_IMODE(st.st_mode), owner


# Why a hard link can be refused where a copy would work: another filesystem,
# a filesystem without links, an inode at its link limit.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def _link_to_staging(target: Path, backup: Path) -> Path | None:
    """Hard-link ``target`` to a staging name beside ``backup``; None if refused."""
    tmp = staging_path(backup)
    try:
        os.link(target, tmp)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return None
        raise
    try:
        fsync_path(tmp)  # the target's bytes may never have been fsynced (put there by hand)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def backup_file(target: Path, backup: Path, check: Callable[[], None] = no_check) -> None:
    """Make ``backup`` a durable copy of ``target`` (which may be on another filesystem).

    On the same filesystem the backup is a hard link to the target's inode and
    nothing is copied: an install never writes into the target, it renames a
    new file over it, so from then on the old bytes live under the backup's
    name alone (and a rollback copies them back to a new file). Elsewhere, or
    where links are refused, the bytes are copied. Either way the backup gets
    its name by a rename of a staging file, so a kill leaves no half backup.
    """
    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = _link_to_staging(target, backup)
    if tmp is None:
        mode, _ = _mode_and_owner(target, 0o755)
        tmp, _digest = copy_to_staging(target, backup, mode, check=check, fault_mid="mid_backup")
    else:
        fault("mid_backup")
    install_staged(tmp, backup)


def restore_file(backup: Path, target: Path, check: Callable[[], None] = no_check) -> None:
    """Put ``backup`` back as ``target``: copy beside the target, fsync, rename.

    The target keeps its current mode bits and owner (the backup's when the
    target is gone).
    """
    mode, owner = _mode_and_owner(target, -1)
    if mode == -1:
        mode, owner = _mode_and_owner(backup, 0o755)
    tmp, _digest = copy_to_staging(
        backup, target, mode, owner=owner, check=check, fault_mid="mid_restore"
    )
    install_staged(tmp, target)


def remove_path(path: Path) -> None:
    """Remove a file or symlink (a first install rolled back) durably."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a release directory and its completion marker; missing is fine."""
    marker = path.with_name(path.name + ".complete")
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink():
        path.unlink()


# ---------------------------------------------------------------------------
# Planning helpers of the applicator
# ---------------------------------------------------------------------------


def prepare_file_install(
    path: Path, package: Path, backup: str | None
) -> tuple[int, tuple[int, int] | None]:
    """Free-space checks before a file install; the mode bits and owner to give it."""
    check_free_space(path.parent, package.stat().st_size)
    if backup is None:
        return 0o755, None
    current = path.stat()
    Path(backup).parent.mkdir(parents=True, exist_ok=True)
    check_free_space(Path(backup).parent, current.st_size)
    # Keep the target's owner (as root), which a fresh file would not have.
    owner = (current.st_uid, current.st_gid) if os.geteuid() == 0 else None
    return current.st_mode & 0o7777, owner


def prepare_releases(path: Path, package: Path, releases: Path, adopt_to: Path | None) -> None:
    """Free-space check and the releases directory; adopt a real directory at ``path``.

    A symlink cannot be renamed over a real directory: a first install moves
    the directory into the releases, then links to it, as its own step.
    """
    if path.exists() and not path.is_dir():
        raise ApplyError(INSTALL_FAILED, f"{path} exists and is not a directory")
    check_free_space(path.parent, package.stat().st_size)
    if not releases.is_dir():
        releases.mkdir(parents=True)
        fsync_dir(releases.parent)
    if adopt_to is not None:
        path.rename(adopt_to)
        fsync_dir(releases)
        fsync_dir(path.parent)
        make_symlink_live(path, adopt_to)


def restore_quick(p: Pending, path: Path) -> str:
    """Do the quick part of undoing ``p``; return what is left: copy, verify or done."""
    backup = Path(p.backup) if p.backup else None
    if p.is_dir:
        if path.is_dir() and not path.is_symlink():
            return "done"  # adoption never happened: the target was not touched
        if backup is not None and backup.is_dir():
            make_symlink_live(path, backup)
        elif not p.had_previous:
            remove_path(path)
        elif backup is not None:
            raise ApplyError(ROLLBACK_FAILED, f"previous release {backup} is gone")
        return "done"
    if backup is not None and backup.exists():
        return "copy"
    if not p.had_previous:
        remove_path(path)
        return "done"
    if p.kind == "operator_rollback":
        raise ApplyError(ROLLBACK_FAILED, f"backup {backup} is missing")
    return "verify" if p.package_id and path.exists() else "done"


_LABEL = re.compile(r"[0-9A-Za-z.+-]{1,64}")


def version_label(version: str | None) -> str:
    """A version as part of a file name; anything odd (from a config file) is 'unknown'."""
    if version and _LABEL.fullmatch(version) and version not in (".", ".."):
        return version
    return "unknown"


@dataclass(frozen=True)
class InstallPlan:
    """Where an install puts things, decided before anything is touched."""

    had_previous: bool  # something is at the target now
    adopt: bool  # directory target: a real directory is moved into the releases first
    backup: str | None  # file: backup file to make; directory: previous release
    release: str | None  # directory target: the new release directory


def plan_install(
    path: Path, is_dir: bool, version: str, installed: str | None, backup_dir: Path
) -> InstallPlan:
    """Choose unique names for the backup and the new release of one install."""
    token = secrets.token_hex(4)
    had_previous = path.exists() or path.is_symlink()
    if not is_dir:
        name = f"{version_label(installed)}-{token}.bak"
        return InstallPlan(
            had_previous, False, str(backup_dir / name) if had_previous else None, None
        )
    releases = releases_dir(path)
    release = str(releases / f"{version_label(version)}-{token}")
    if path.is_dir() and not path.is_symlink():
        return InstallPlan(True, True, str(releases / f"adopted-{token}"), release)
    live = read_live_release(path) if had_previous else None
    return InstallPlan(had_previous, False, str(live) if live else None, release)


def releases_dir(target: Path) -> Path:
    """Where a directory target's releases live: beside it, on the same filesystem."""
    return target.parent / f"{target.name}.releases"


def inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is an entry of ``directory`` (what we may delete there)."""
    return path.parent == directory


def resolve_file_target(path: Path) -> Path:
    """A file target given as a symlink is installed at the file it points to
    (renaming over the link would replace it with a plain file)."""
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


# ---------------------------------------------------------------------------
# Directory targets (unpacking a release: unpack.py)
# ---------------------------------------------------------------------------


def read_live_release(target: Path) -> Path | None:
    """The directory a symlinked target points at (absolute), or None if not a link."""
    if not target.is_symlink():
        return None
    dest = Path(os.readlink(target))
    if not dest.is_absolute():
        dest = target.parent / dest
    return Path(os.path.normpath(dest))


def make_symlink_live(target: Path, release: Path) -> None:
    """Point the symlink ``target`` at ``release`` atomically (new link, then rename).

    ``target`` must not be a real directory (a symlink cannot be renamed over
    one): the applicator adopts such a directory first.
    """
    try:
        dest = os.path.relpath(release, target.parent)
    except ValueError:  # pragma: no cover - only on other drives (Windows)
        dest = str(release)
    tmp = staging_path(target, "link")
    os.symlink(dest, tmp)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
