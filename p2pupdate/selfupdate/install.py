"""The managed install: release venvs, the ``current`` link, the stable launcher, shared state.

Layout of a managed install ``DIR``::

    DIR/bin/p2pupdate               the stable launcher's stub (updates never replace it)
    DIR/lib/launcher/               the launcher (stdlib only): copies of
                                    p2pupdate/selfupdate/launcher.py and p2pupdate/core/boot.py
    DIR/releases/<version>/         a venv with that release, built in place (venvs cannot move)
    DIR/releases/<version>.complete completion marker, written last: no marker, no release
    DIR/current -> releases/<v>     the release services run, switched atomically
    DIR/previous -> releases/<v>    the release to go back to ("armed" before each switch)
    DIR/state/install.lock          flock: one install or switch at a time
    DIR/state/install.json          the base interpreter new venvs are made with
    DIR/state/quarantine.json       quarantined releases, shared by every node of the install
    DIR/state/boots/<key>.json      boot attempts per node and release (launcher counts,
                                    the node confirms)
    DIR/state/nodes/<key>.json      registration of a running node: pid, release
    DIR/state/history.log           one line per boot, switch and rollback, in order
    DIR/tmp/                        wheels being unpacked

A node's key is a hash of its absolute data dir (:func:`node_key`); the
launcher passes it to the node in ``P2PUPDATE_NODE_KEY``.

Functions here are synchronous and blocking (the node runs them in a worker
thread). The caller holds :func:`install_lock` around :func:`install_release`
and :func:`switch_current`. Nothing here decides whether to update; see
:mod:`p2pupdate.selfupdate.manager`.

Fault injection for the crash tests (``P2PUPDATE_FAULT``): ``self_mid_install``
(venv half made), ``self_after_install`` (release complete, not yet armed),
``self_after_arm`` (``previous`` written, ``current`` not yet switched),
``self_after_switch`` (``current`` switched, node not yet re-exec'd).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core import boot
from p2pupdate.core.announcement import validate_version
from p2pupdate.core.selfupdate import retention
from p2pupdate.errors import ApplyError, StateFileError
from p2pupdate.selfupdate import launcher
from p2pupdate.selfupdate.release import ReleaseManifest, open_release
from p2pupdate.shell.faults import fault
from p2pupdate.shell.fsutil import (
    atomic_write_bytes,
    fsync_dir,
    pid_alive,
    read_json_file,
)
from p2pupdate.shell.install.targets import make_symlink_live

__all__ = [
    "DEFAULT_BOOT_ATTEMPTS",
    "LAUNCHER_MARK",
    "NODE_KEY_ENV",
    "SELF_FAULT_POINTS",
    "Layout",
    "base_python",
    "boot_records",
    "confirm_boot",
    "install_lock",
    "install_release",
    "is_complete",
    "log_history",
    "node_key",
    "node_registrations",
    "prune_releases",
    "quarantine",
    "quarantine_clear",
    "quarantine_reasons",
    "quarantined",
    "read_boot_record",
    "read_link",
    "register_node",
    "registered_nodes",
    "roll_back_install",
    "setup_install",
    "switch_current",
    "unregister_node",
    "write_launcher",
]

NODE_KEY_ENV = launcher.NODE_KEY_ENV
LAUNCHER_MARK = launcher.STUB_MARK
DEFAULT_BOOT_ATTEMPTS = boot.DEFAULT_BOUND
SELF_FAULT_POINTS = (
    "self_mid_install",
    "self_after_install",
    "self_after_arm",
    "self_after_switch",
)
_FORMAT = 1
_MAX_STATE = DEFAULT_LIMITS.max_selfupdate_state  # Limits says why


@dataclass(frozen=True)
class Layout:
    """The paths of a managed install rooted at ``root``."""

    root: Path

    @property
    def launcher(self) -> Path:
        return self.root / "bin" / "p2pupdate"

    @property
    def launcher_lib(self) -> Path:
        return self.root / "lib" / "launcher"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def quarantine_path(self) -> Path:
        return self.state / "quarantine.json"

    @property
    def history(self) -> Path:
        return self.state / "history.log"

    def release(self, version: str) -> Path:
        return self.releases / validate_version(version)

    def marker(self, version: str) -> Path:
        return self.releases / f"{validate_version(version)}.complete"

    def program(self, version: str) -> Path:
        return self.release(version) / "bin" / "p2pupdate"

    def boot_path(self, key: str) -> Path:
        return self.state / "boots" / f"{key}.json"

    def node_path(self, key: str) -> Path:
        return self.state / "nodes" / f"{key}.json"


def node_key(data_dir: Path | str) -> str:
    """The key of a node in an install's state: a hash of its absolute data dir."""
    return boot.node_key_of(os.path.abspath(data_dir))


def base_python() -> str:
    """The interpreter new release venvs are made with (not a venv's own python)."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


# ---------------------------------------------------------------- small state files


def _read_json(path: Path) -> Any:
    return read_json_file(path, _MAX_STATE)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, sort_keys=True).encode())


def log_history(layout: Layout, line: str) -> None:
    """Append one line to the install's history (one write, O_APPEND: lines never mix)."""
    layout.state.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{time.time():.3f} {line}\n".encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def install_lock(layout: Layout) -> Iterator[None]:
    """Hold the install's lock (blocking): one install or switch at a time."""
    layout.state.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.state / "install.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_link(link: Path) -> str | None:
    """The release name a ``current``/``previous`` link points at; None if there is no link.

    Raises StateFileError when the link exists but is not a link into ``releases/``.
    """
    try:
        dest = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{link}: {exc}") from exc
    parts = Path(dest).parts
    if len(parts) != 2 or parts[0] != "releases":
        raise StateFileError(f"{link} points at {dest!r}, not releases/<version>")
    return parts[1]


def is_complete(layout: Layout, version: str) -> bool:
    """Whether ``version`` is a whole release (its marker and its program are there)."""
    try:
        return layout.marker(version).is_file() and layout.program(version).exists()
    except ValueError:
        return False


# ---------------------------------------------------------------- quarantine


# One store, written by the launcher past the bound and by the installing node:
# :mod:`p2pupdate.selfupdate.launcher` reads and writes it for both.


def quarantined(layout: Layout) -> list[str]:
    """Quarantined release versions of this install, oldest first."""
    return [e["version"] for e in launcher.quarantine_list(str(layout.root))]


def quarantine_reasons(layout: Layout) -> dict[str, str]:
    """Quarantined release -> the reason it was quarantined for."""
    entries = launcher.quarantine_list(str(layout.root))
    return {e["version"]: str(e.get("reason", "")) for e in entries}


def quarantine(layout: Layout, version: str, reason: str, node: str = "") -> None:
    """Record ``version`` as quarantined for every node of the install."""
    launcher.add_quarantine(str(layout.root), version, reason, node)


def quarantine_clear(layout: Layout, version: str) -> bool:
    """Lift the quarantine of ``version``; False if it was not quarantined."""
    return launcher.clear_quarantine(str(layout.root), version)


# ---------------------------------------------------------------- installing


def _remove_release(layout: Layout, version: str) -> None:
    """Remove a release: marker first (so a half-removed dir is never taken for whole)."""
    layout.marker(version).unlink(missing_ok=True)
    fsync_dir(layout.releases)
    shutil.rmtree(layout.release(version), ignore_errors=True)


def _state_python(layout: Layout) -> str:
    with contextlib.suppress(StateFileError):
        obj = _read_json(layout.state / "install.json")
        python = obj.get("python") if isinstance(obj, dict) else None
        if isinstance(python, str) and os.access(python, os.X_OK):
            return python
    return base_python()


def install_release(
    layout: Layout, archive: Path, *, package_id: bytes | None = None
) -> tuple[ReleaseManifest, bool]:
    """Install the release ``archive`` into ``releases/<version>``; (manifest, installed now).

    Caller holds :func:`install_lock`. A complete release of that version is
    left alone (installed now = False). A directory without its marker is a
    leftover of a killed install: it is removed and built again. On any
    failure nothing half-made stays and nothing else changes. Raises
    ApplyError (``bad_archive``, ``wrong_platform``, ``install_failed``).
    """
    layout.releases.mkdir(parents=True, exist_ok=True)
    tmp_root = layout.root / "tmp"
    tmp_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="unpack-") as tmp:
        manifest = open_release(archive, Path(tmp), package_id=package_id)
        version = manifest.version
        if is_complete(layout, version):
            return manifest, False
        release = layout.release(version)
        if release.exists() or release.is_symlink():
            _remove_release(layout, version)
        try:
            _build_venv(layout, release, Path(tmp) / "wheels", manifest)
        except BaseException:
            shutil.rmtree(release, ignore_errors=True)
            raise
    return manifest, True


def _build_venv(layout: Layout, release: Path, wheels: Path, manifest: ReleaseManifest) -> None:
    python = _state_python(layout)
    _run([python, "-m", "venv", "--without-pip", str(release)], "venv")
    pip_wheel = next((wheels / n for n, _, _ in manifest.wheels if n.startswith("pip-")), None)
    if pip_wheel is None:
        raise ApplyError("bad_archive", "no pip wheel in the release")
    fault("self_mid_install")
    # pip runs from its own wheel: the release needs no registry and no pip on the host.
    _run(
        [
            str(release / "bin" / "python"),
            str(pip_wheel / "pip"),
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "-q",
            f"p2pupdate=={manifest.version}",
        ],
        "pip install",
    )
    if not (release / "bin" / "p2pupdate").exists():
        raise ApplyError("install_failed", f"{release}/bin/p2pupdate missing after install")
    os.sync()  # the whole venv durable before the marker says it is a release
    marker = layout.marker(manifest.version)
    atomic_write_bytes(marker, json.dumps(manifest.to_json()).encode())
    fault("self_after_install")


# A release venv is built from its own wheelhouse only: nothing the caller's Python can see
# (PYTHONPATH, a user site) may make pip think a dependency is already there.
_ISOLATE_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_TARGET")


def _run(cmd: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATE_DROP}
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ApplyError("install_failed", f"{what} failed ({proc.returncode}): {tail}")


def switch_current(layout: Layout, version: str) -> str | None:
    """Arm (``previous`` := the current release), then point ``current`` at ``version``.

    Caller holds :func:`install_lock`. Returns the release ``current`` pointed
    at before (None on a fresh install). Refuses a release that is not
    complete (ApplyError ``install_failed``).
    """
    if not is_complete(layout, version):
        raise ApplyError("install_failed", f"release {version} is not complete")
    old = read_link(layout.current)
    if old is not None and old != version:
        make_symlink_live(layout.previous, layout.release(old))
        fault("self_after_arm")
    make_symlink_live(layout.current, layout.release(version))
    log_history(layout, f"switch {old or '-'} -> {version}")
    fault("self_after_switch")
    return old


def _complete_releases(layout: Layout) -> list[str]:
    if not layout.releases.is_dir():
        return []
    out = []
    for entry in layout.releases.iterdir():
        name = entry.name.removesuffix(".complete")
        if entry.name.endswith(".complete") and is_complete(layout, name):
            out.append(name)
    return out


def _rearm_previous(layout: Layout, busy: set[str]) -> set[str]:
    """Point ``previous`` at a good release other than ``current``; the releases to keep.

    Caller holds :func:`install_lock`. See :func:`p2pupdate.core.selfupdate.retention`.
    """
    current = read_link(layout.current)
    try:
        previous = read_link(layout.previous)
    except StateFileError:
        previous = None
    want, keep = retention(
        _complete_releases(layout),
        current=current,
        previous=previous,
        quarantined=quarantined(layout),
        busy=busy,
    )
    if want is not None and want != previous:
        make_symlink_live(layout.previous, layout.release(want))
        log_history(layout, f"previous {previous or '-'} -> {want}")
    return keep


def prune_releases(layout: Layout, keep: set[str]) -> list[str]:
    """Remove releases the install does not keep; the removed.

    Kept: ``keep`` (the releases running nodes use), ``current`` and
    ``previous``, which is first pointed at the newest complete, not
    quarantined release other than ``current`` when it names ``current`` (as
    after a rollback) or a quarantined release. Directories without their
    marker (leftovers of a killed install) go too.
    """
    with install_lock(layout):
        try:
            keep = _rearm_previous(layout, set(keep))
        except StateFileError:
            return []  # cannot be sure what current is: remove nothing
        removed: list[str] = []
        if not layout.releases.is_dir():
            return removed
        for entry in sorted(layout.releases.iterdir()):
            name = entry.name.removesuffix(".complete")
            if name in keep or entry.name.startswith("."):
                continue
            try:
                validate_version(name)
            except ValueError:
                continue
            _remove_release(layout, name)
            if name not in removed:
                removed.append(name)
        return removed


def roll_back_install(
    layout: Layout, version: str, key: str, *, quarantine_reason: str | None
) -> str | None:
    """Take the install off ``version``; the release ``current`` names afterwards.

    Quarantines ``version`` (unless ``quarantine_reason`` is None), switches
    ``current`` back to ``previous`` when it still names ``version`` and
    ``previous`` is a complete release that is not quarantined, then points
    ``previous`` at a good release other than ``current`` (see
    :func:`prune_releases`). Takes the install lock.
    """
    if quarantine_reason is not None:
        quarantine(layout, version, quarantine_reason, key)
    with install_lock(layout):
        if read_link(layout.current) == version:
            prev = read_link(layout.previous)
            good = prev is not None and prev != version and prev not in quarantined(layout)
            if prev is not None and good and is_complete(layout, prev):
                make_symlink_live(layout.current, layout.release(prev))
                log_history(layout, f"rollback {version} -> {prev} node={key} by=installer")
        _rearm_previous(layout, set())
        return read_link(layout.current)


# ---------------------------------------------------------------- boots and nodes


def read_boot_record(layout: Layout, key: str) -> dict[str, Any]:
    """The boot record of node ``key`` (``{"releases": {v: {attempts, confirmed}}, ...}``)."""
    try:
        obj = _read_json(layout.boot_path(key))
    except StateFileError:
        return {"releases": {}}
    if not isinstance(obj, dict) or not isinstance(obj.get("releases"), dict):
        return {"releases": {}}
    return obj


def write_boot_record(layout: Layout, key: str, record: dict[str, Any]) -> None:
    _write_json(layout.boot_path(key), record)


def confirm_boot(layout: Layout, key: str, version: str, bound: int) -> bool:
    """Node ``key`` runs ``version`` healthily; True if that boot was counted (a new release)."""
    record = read_boot_record(layout, key)
    entry = record["releases"].get(version)
    counted = isinstance(entry, dict) and not entry.get("confirmed", False)
    record["releases"][version] = {
        "attempts": entry.get("attempts", 0) if isinstance(entry, dict) else 0,
        "confirmed": True,
    }
    record["bound"] = bound
    write_boot_record(layout, key, record)
    return counted


def register_node(layout: Layout, key: str, *, pid: int, release: str, data_dir: str) -> None:
    """Say that node ``key`` (process ``pid``) runs ``release`` from this install."""
    _write_json(
        layout.node_path(key),
        {"pid": pid, "release": release, "data_dir": data_dir, "at": time.time()},
    )


def unregister_node(layout: Layout, key: str) -> None:
    layout.node_path(key).unlink(missing_ok=True)


def node_registrations(layout: Layout) -> dict[str, dict[str, Any]]:
    """Every registration, alive or not: key -> registration plus ``alive`` (its pid runs)."""
    out: dict[str, dict[str, Any]] = {}
    directory = layout.state / "nodes"
    if not directory.is_dir():
        return out
    for path in directory.glob("*.json"):
        with contextlib.suppress(StateFileError):
            obj = _read_json(path)
            if isinstance(obj, dict) and isinstance(obj.get("pid"), int):
                out[path.stem] = {**obj, "alive": pid_alive(obj["pid"])}
    return out


def registered_nodes(layout: Layout) -> dict[str, dict[str, Any]]:
    """Registered nodes whose process is alive: key -> registration."""
    return {k: v for k, v in node_registrations(layout).items() if v["alive"]}


def boot_records(layout: Layout) -> dict[str, dict[str, Any]]:
    """Every node's boot record: key -> record (see :func:`read_boot_record`)."""
    directory = layout.state / "boots"
    if not directory.is_dir():
        return {}
    return {path.stem: read_boot_record(layout, path.stem) for path in directory.glob("*.json")}


# ---------------------------------------------------------------- setting up


def write_launcher(layout: Layout, python: str) -> None:
    """Write the stable launcher (atomically); only ``self install`` does this.

    Copies :mod:`p2pupdate.selfupdate.launcher` and :mod:`p2pupdate.core.boot`
    into ``DIR/lib/launcher/``, then writes the stub ``DIR/bin/p2pupdate`` that
    runs them with ``python`` (last: no stub, no launcher).
    """
    lib = layout.launcher_lib
    lib.mkdir(parents=True, exist_ok=True)
    for module, name in ((launcher, launcher.MODULE), (boot, launcher.BOOT_MODULE)):
        source = Path(str(module.__file__)).read_bytes()
        atomic_write_bytes(lib / f"{name}.py", source, mode=0o644)
    layout.launcher.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.launcher, launcher.stub(python).encode(), mode=0o755)


def setup_install(root: Path, archive: Path) -> str:
    """``self install``: install the release ``archive`` in ``root`` and make it current."""
    layout = Layout(root.absolute())
    layout.root.mkdir(parents=True, exist_ok=True)
    python = base_python()
    _write_json(layout.state / "install.json", {"format": _FORMAT, "python": python})
    write_launcher(layout, python)
    with install_lock(layout):
        manifest, _ = install_release(layout, archive)
        switch_current(layout, manifest.version)
    return manifest.version
