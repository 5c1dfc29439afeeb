"""``p2pupdate release build`` and ``p2pupdate self install``: the operator's commands.

``release build --out FILE`` makes the wheelhouse archive of the current
checkout (needs the package registry, or ``--find-links DIR --no-index``);
``self install --install-dir DIR [--wheelhouse FILE]`` sets up or updates a
managed install from one (building it first when no file is given). Neither
talks to a node; publishing a release is ``p2pupdate publish``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from p2pupdate.errors import UsageError
from p2pupdate.selfupdate.install import setup_install
from p2pupdate.selfupdate.release import build_release, platform_channel, source_checkout

__all__ = ["run_release_command", "run_self_command"]


def _source(args: argparse.Namespace) -> Path:
    source: Path | None = getattr(args, "source", None) or source_checkout()
    if source is None:
        raise UsageError(
            "no source checkout to build from: give --source DIR (or --wheelhouse FILE)"
        )
    return source


def run_release_command(args: argparse.Namespace) -> int:
    if args.rcommand != "build":
        raise UsageError("p2pupdate release: expected 'build --out FILE'")
    manifest = build_release(
        args.out.absolute(),
        _source(args),
        find_links=args.find_links,
        no_index=args.no_index,
        no_build_isolation=args.no_build_isolation,
    )
    channel = platform_channel(args.track, manifest.python_tag, manifest.platform_tag)
    print(f"built p2pupdate {manifest.version} for {manifest.platform}: {args.out}")
    print(f"publish it on channel {channel} with --version {manifest.version}")
    return 0


def run_self_command(args: argparse.Namespace) -> int:
    if args.scommand != "install":
        raise UsageError("p2pupdate self: expected 'install --install-dir DIR'")
    root: Path = args.install_dir.absolute()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--install-dir {root}: exists and is not a directory")
    if args.wheelhouse is not None:
        if not args.wheelhouse.is_file():
            raise UsageError(f"--wheelhouse {args.wheelhouse}: no such file")
        version = setup_install(root, args.wheelhouse.absolute())
    else:
        with tempfile.TemporaryDirectory(prefix="p2pupdate-self-") as tmp:
            archive = Path(tmp) / "release.tar"
            build_release(archive, _source(args))
            version = setup_install(root, archive)
    print(f"installed p2pupdate {version} in {root}/releases/{version}")
    print(f"services run {root}/bin/p2pupdate node ... (the stable launcher)")
    return 0
