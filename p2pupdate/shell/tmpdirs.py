"""A node's temporary files live under its data dir, in ``DATA/tmp/``.

``tempfile.mkdtemp`` in the system temp dir leaves a directory behind for
every node that is killed (SIGKILL, a crash) or whose cleanup never runs.
Under the data dir they are the node's own: :func:`clean_node_tmp` removes
whatever a previous run of the node left there, once at start, before anything
of this run makes a temporary file.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

__all__ = ["TMP_DIR", "clean_node_tmp", "node_tmp_dir"]

TMP_DIR = "tmp"


def node_tmp_dir(data_dir: Path) -> Path:
    """``DATA/tmp`` (made if missing): where the node's temporary dirs go."""
    path = data_dir / TMP_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_node_tmp(data_dir: Path) -> list[str]:
    """Remove what a previous run left in ``DATA/tmp``; the names removed."""
    path = data_dir / TMP_DIR
    removed: list[str] = []
    try:
        entries = sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry.name)
    return removed
