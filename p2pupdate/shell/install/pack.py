"""Deterministic, chunk-aligned tar archives of a directory (``p2pupdate pack``).

The same tree always packs to the same bytes, whatever the files' timestamps,
owners or the order the filesystem lists them in, so an unchanged file keeps its
bytes from one release to the next and a node can reuse its chunks
(:mod:`p2pupdate.shell.transfer.reuse`). The layout (docs/applying.md, "Packing
a directory"):

* POSIX pax format (ustar headers, pax extended headers where needed), no
  compression; members in sorted order of their path, a directory before its
  contents; names relative to the directory packed, no ``./`` prefix.
* Normalized fields: mtime 0, uid and gid 0, empty user and group names;
  directories mode 0755, regular files 0755 when any execute bit is set and
  0644 otherwise, symlinks 0777 (their target is kept as it is). Hard links are
  packed as separate regular files; devices, fifos and sockets are refused.
* Alignment: the data of every regular file of at least ``ALIGN_MIN`` bytes
  starts at a multiple of 64 KiB in the archive. The room before it is filled
  by a pax extended header carrying a ``comment`` record of the right length
  (POSIX: a comment is ignored by every extractor), so a file that changes
  size shifts only the chunks up to the next aligned file. Smaller files are
  packed back to back: aligning each would pad it up to 64 KiB.

Any tar reader unpacks it; the archive checks of directory targets
(:func:`p2pupdate.core.archive.check_archive`) accept it like any other.
"""

from __future__ import annotations

import os
import secrets
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.errors import UsageError
from p2pupdate.shell.fsutil import fsync_dir

__all__ = ["ALIGN", "ALIGN_MIN", "pack_directory", "write_archive"]

ALIGN = DEFAULT_LIMITS.chunk_size
# Files this big or bigger are aligned: the padding (< 64 KiB) costs at most 1/16
# of the file, and every 64 KiB of it can then be reused unchanged.
ALIGN_MIN = 16 * ALIGN
_FORMAT: Literal[2] = 2  # tarfile.PAX_FORMAT
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


def _entries(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(archive name, path, lstat) of everything under ``root``, sorted, dirs first."""

    def walk(d: Path, prefix: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        try:
            names = sorted(os.listdir(d))
        except OSError as exc:
            raise UsageError(f"cannot read directory {d}: {exc.strerror}") from None
        for name in names:
            path = d / name
            st = path.lstat()
            arc = f"{prefix}{name}"
            yield arc, path, st
            if stat.S_ISDIR(st.st_mode):
                yield from walk(path, f"{arc}/")

    yield from walk(root, "")


def _info(name: str, path: Path, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.mode = tarfile.SYMTYPE, 0o777
        info.linkname = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    else:
        raise UsageError(f"{path}: only files, directories and symlinks can be packed")
    return info


def _header_len(info: tarfile.TarInfo) -> int:
    return len(info.tobuf(_FORMAT, _ENCODING, _ERRORS))


def _align(info: tarfile.TarInfo, offset: int) -> None:
    """Pad ``info``'s header so its data starts at a multiple of ALIGN after ``offset``."""
    if (offset + _header_len(info)) % ALIGN == 0:
        return
    # A comment record of n bytes; every step adds what is missing (headers grow in
    # whole 512-byte blocks, and the record keeps ~500 bytes of slack in its last
    # block, so a length field gaining a digit does not spill into a new block).
    # Letters, not digits: Python 3.11's tarfile looks for ``\d+ hdrcharset=`` in the
    # pax data with a regex that is quadratic on a long run of digits (seconds per member).
    n = 0
    for _ in range(8):
        info.pax_headers = {**info.pax_headers, "comment": "p" * n}
        need = -(offset + _header_len(info)) % ALIGN
        if need == 0:
            return
        n += need
    raise AssertionError("tar header alignment did not converge")  # pragma: no cover


def write_archive(root: Path, out: BinaryIO) -> int:
    """Pack the tree under ``root`` into ``out`` (a binary file); return the members."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    count = 0
    with tarfile.open(
        fileobj=out, mode="w", format=_FORMAT, encoding=_ENCODING, errors=_ERRORS
    ) as tar:
        for name, path, st in _entries(root):
            info = _info(name, path, st)
            count += 1
            if count > DEFAULT_LIMITS.max_archive_members:
                raise UsageError(
                    f"{root} has more than {DEFAULT_LIMITS.max_archive_members} entries: "
                    "nodes refuse such an archive"
                )
            if info.isreg():
                if info.size >= ALIGN_MIN:
                    _align(info, tar.offset)
                with path.open("rb") as f:
                    if os.fstat(f.fileno()).st_size != info.size:
                        raise UsageError(f"{path} changed while being packed")
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return count


def pack_directory(root: Path, dest: Path) -> int:
    """Write the archive of ``root`` to ``dest`` atomically (temp file, fsync, rename)."""
    dest = dest.absolute()
    if dest.is_relative_to(root.absolute()):
        raise UsageError(f"the archive {dest} cannot be inside the directory it packs")
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as f:
            count = write_archive(root, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # An unreadable file, a vanished one, no room or no directory for the archive:
        # the person's to fix, one line (exit 2).
        where = f" ({exc.filename})" if exc.filename else ""
        raise UsageError(f"cannot pack {root} into {dest}: {exc.strerror or exc}{where}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
