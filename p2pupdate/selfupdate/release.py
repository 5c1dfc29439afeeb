"""Releases of p2pupdate itself: the wheelhouse archive, its manifest, its channel.

A release is one uncompressed tar file::

    release.json          manifest: name, version, python and platform tags, wheels + sha256
    wheels/<name>.whl     the p2pupdate wheel, every dependency wheel, and pip's own wheel

so a node installs it into a fresh venv with no registry access (pip runs from
its own wheel). :func:`build_release` makes one from a source checkout with
``pip wheel`` (where the package registry is reachable, or offline from
``find_links``); :func:`open_release` checks one that came over the swarm
(member names, sizes, hashes, platform) and unpacks its wheels.

The channel of a release names the track and the platform:
``p2pupdate/<track>/<python tag>-<platform tag>``, lowercase, e.g.
``p2pupdate/stable/cp311-linux_x86_64``; a node follows only its own.

This module does not install anything (see :mod:`p2pupdate.selfupdate.install`)
and does not publish (``p2pupdate publish`` does, like for any package).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.errors import ApplyError, UsageError

__all__ = [
    "MANIFEST_NAME",
    "MAX_RELEASE_SIZE",
    "WRONG_PLATFORM",
    "ReleaseManifest",
    "build_release",
    "open_release",
    "platform_channel",
    "platform_id",
    "source_checkout",
]

MANIFEST_NAME = "release.json"
_FORMAT = 1
# Release size, members and manifest size: Limits (config.py) says why.
MAX_RELEASE_SIZE = DEFAULT_LIMITS.max_release_size
_MAX_MEMBERS = DEFAULT_LIMITS.max_release_members
_MAX_MANIFEST = DEFAULT_LIMITS.max_release_manifest
# A wheel file name: no path separators, no leading dot.
_WHEEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+!-]{0,200}\.whl", re.ASCII)
_TRACK_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}", re.ASCII)
WRONG_PLATFORM = "wrong_platform"


def platform_id() -> tuple[str, str]:
    """(python tag, platform tag) of this interpreter, lowercase: ("cp311", "linux_x86_64")."""
    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
    py = f"{impl}{sys.version_info.major}{sys.version_info.minor}".lower()
    plat = re.sub(r"[^a-z0-9_]", "_", sysconfig.get_platform().lower())
    return py, plat


def platform_channel(track: str, python_tag: str | None = None, platform: str | None = None) -> str:
    """The channel of releases for ``track`` on this (or the given) platform."""
    if not _TRACK_RE.fullmatch(track):
        raise UsageError(f"bad self-update track {track!r} (lowercase letters, digits, . _ -)")
    here_py, here_plat = platform_id()
    name = f"p2pupdate/{track}/{(python_tag or here_py).lower()}-{(platform or here_plat).lower()}"
    try:
        return validate_channel(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class ReleaseManifest:
    """What ``release.json`` says; validated on load."""

    version: str
    python_tag: str
    platform_tag: str
    wheels: tuple[tuple[str, str, int], ...]  # (file name, sha256 hex, size)
    built_at: float

    @property
    def platform(self) -> str:
        return f"{self.python_tag}-{self.platform_tag}"

    def to_json(self) -> dict[str, object]:
        return {
            "format": _FORMAT,
            "name": "p2pupdate",
            "version": self.version,
            "python_tag": self.python_tag,
            "platform_tag": self.platform_tag,
            "wheels": [{"name": n, "sha256": h, "size": s} for n, h, s in self.wheels],
            "built_at": self.built_at,
        }

    @classmethod
    def from_json(cls, data: bytes) -> ReleaseManifest:
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
                raise ValueError("not a format 1 release manifest")
            if obj.get("name") != "p2pupdate":
                raise ValueError("not a release of p2pupdate")
            version = validate_version(str(obj["version"]))
            wheels: list[tuple[str, str, int]] = []
            for w in obj["wheels"]:
                name, digest, size = str(w["name"]), str(w["sha256"]), w["size"]
                if not _WHEEL_RE.fullmatch(name) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError(f"bad wheel entry {name!r}")
                if not isinstance(size, int) or size < 0:
                    raise ValueError(f"bad size of {name}")
                wheels.append((name, digest, size))
            py, plat = str(obj["python_tag"]), str(obj["platform_tag"])
            if not re.fullmatch(r"[a-z0-9_]{1,64}", py + plat):
                raise ValueError("bad platform tags")
            return cls(version, py, plat, tuple(wheels), float(obj["built_at"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ApplyError("bad_archive", f"release manifest: {exc}") from exc


def source_checkout() -> Path | None:
    """The source checkout this p2pupdate runs from, if it is one (pyproject.toml beside)."""
    here = Path(__file__).resolve().parent.parent.parent
    return here if (here / "pyproject.toml").is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _project_version(wheels: Sequence[Path]) -> str:
    for w in wheels:
        parts = w.name.split("-")
        if parts[0] == "p2pupdate" and len(parts) >= 2:
            try:
                return validate_version(parts[1])
            except ValueError as exc:
                raise UsageError(
                    f"{w.name}: release versions must be semver X.Y.Z: {exc}"
                ) from None
    raise UsageError("the wheelhouse has no p2pupdate wheel")


def build_release(
    out: Path,
    source: Path,
    *,
    find_links: Sequence[Path] = (),
    no_index: bool = False,
    no_build_isolation: bool = False,
    python: str = sys.executable,
) -> ReleaseManifest:
    """Build the wheelhouse of ``source`` (a checkout) for this platform into ``out``.

    Runs ``pip wheel`` for the project, its dependencies and pip itself. Raises
    UsageError for a missing checkout or output directory, P2PUpdateError
    (ApplyError ``build_failed``) with pip's last lines when pip fails.
    """
    if not (source / "pyproject.toml").is_file():
        raise UsageError(f"{source} is not a source checkout (no pyproject.toml)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="p2pupdate-release-") as tmp:
        wheel_dir = Path(tmp) / "wheels"
        cmd = [python, "-m", "pip", "wheel", "--disable-pip-version-check", "-q"]
        cmd += ["--wheel-dir", str(wheel_dir), "--prefer-binary"]
        for link in find_links:
            cmd += ["--find-links", str(link)]
        if no_index:
            cmd.append("--no-index")
        if no_build_isolation:
            cmd.append("--no-build-isolation")
        cmd += [str(source), "pip"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise ApplyError("build_failed", f"pip wheel failed: {tail}")
        wheels = sorted(wheel_dir.glob("*.whl"))
        version = _project_version(wheels)
        py, plat = platform_id()
        manifest = ReleaseManifest(
            version,
            py,
            plat,
            tuple((w.name, _sha256(w), w.stat().st_size) for w in wheels),
            time.time(),
        )
        tmp_out = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(manifest.to_json(), indent=1).encode()
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size, info.mtime, info.mode = len(data), int(manifest.built_at), 0o644
            tar.addfile(info, io.BytesIO(data))
            for w in wheels:
                tar.add(w, arcname=f"wheels/{w.name}", recursive=False)
        os.replace(tmp_out, out)
    return manifest


def _verified_copy(archive: Path, dest: Path, package_id: bytes) -> Path:
    """Copy ``archive`` into ``dest`` while hashing it (BLAKE3); the copy, if it is
    ``package_id``, else ApplyError(``hash_mismatch``) and no copy is left."""
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / ".release.tar"
    hasher = blake3.blake3()
    total = 0
    try:
        with open(archive, "rb") as src, open(copy, "xb") as dst:
            while chunk := src.read(1024 * 1024):
                total += len(chunk)
                if total > MAX_RELEASE_SIZE:
                    raise ApplyError("bad_archive", "larger than a release can be")
                hasher.update(chunk)
                dst.write(chunk)
        if hasher.digest() != package_id:
            raise ApplyError("hash_mismatch", "release archive changed after it was verified")
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return copy


def open_release(
    archive: Path,
    dest: Path,
    *,
    check_platform: bool = True,
    package_id: bytes | None = None,
) -> ReleaseManifest:
    """Check the release ``archive`` and unpack its wheels into the new dir ``dest/wheels``.

    Raises ApplyError: ``bad_archive`` (unexpected members, sizes, hash
    mismatch, no manifest), ``wrong_platform`` (built for another Python or
    platform). Nothing is left in ``dest`` on error.

    With ``package_id`` (the announced BLAKE3 of the archive), the archive is
    first copied into ``dest`` while it is hashed, and only that copy, which
    nothing else writes, is read: a cache file changed after it was verified is
    refused (``hash_mismatch``) before anything is unpacked. The copy is removed
    at the end.
    """
    copy = _verified_copy(archive, dest, package_id) if package_id is not None else None
    try:
        return _open_release(copy or archive, dest, check_platform=check_platform)
    finally:
        if copy is not None:
            copy.unlink(missing_ok=True)


def _open_release(archive: Path, dest: Path, *, check_platform: bool) -> ReleaseManifest:
    try:
        with tarfile.open(archive, "r:") as tar:
            infos = []
            total = 0
            for info in tar:
                infos.append(info)
                total += info.size
                if len(infos) > _MAX_MEMBERS or total > MAX_RELEASE_SIZE:
                    raise ApplyError("bad_archive", "too many or too large members")
            names = {i.name: i for i in infos}
            mf = names.get(MANIFEST_NAME)
            if mf is None or not mf.isreg() or mf.size > _MAX_MANIFEST:
                raise ApplyError("bad_archive", f"no {MANIFEST_NAME}")
            f = tar.extractfile(mf)
            assert f is not None
            manifest = ReleaseManifest.from_json(f.read())
            if not any(n.startswith("p2pupdate-") for n, _, _ in manifest.wheels):
                raise ApplyError("bad_archive", "no p2pupdate wheel in the release")
            expected = {f"wheels/{n}" for n, _, _ in manifest.wheels} | {MANIFEST_NAME}
            extra = set(names) - expected
            if extra or len(names) != len(infos):
                raise ApplyError("bad_archive", f"unexpected members {sorted(extra)[:3]}")
            if check_platform and manifest.platform != "-".join(platform_id()):
                raise ApplyError(
                    WRONG_PLATFORM,
                    f"release built for {manifest.platform}, this node is "
                    f"{'-'.join(platform_id())}",
                )
            wheel_dir = dest / "wheels"
            wheel_dir.mkdir(parents=True)
            try:
                for name, digest, size in manifest.wheels:
                    member = names.get(f"wheels/{name}")
                    if member is None or not member.isreg() or member.size != size:
                        raise ApplyError("bad_archive", f"wheel {name} missing or wrong size")
                    src = tar.extractfile(member)
                    assert src is not None
                    h = hashlib.sha256()
                    with open(wheel_dir / name, "wb") as dst:
                        while chunk := src.read(1024 * 1024):
                            h.update(chunk)
                            dst.write(chunk)
                    if h.hexdigest() != digest:
                        raise ApplyError("bad_archive", f"wheel {name}: sha256 mismatch")
            except BaseException:
                shutil.rmtree(wheel_dir, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError) as exc:
        raise ApplyError("bad_archive", f"{type(exc).__name__}: {exc}") from exc
    return manifest
