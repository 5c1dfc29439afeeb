"""Command-line interface: argparse, and the one place errors become exit codes.

Exit codes: 0 done; 1 runtime failure; 2 user mistake (one line on stderr,
never a traceback); 3 the node rolled its own program back and wants its
supervisor to start it again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import nacl.signing

from p2pupdate import __version__
from p2pupdate.core.keys import format_pubkey
from p2pupdate.errors import P2PUpdateError, UsageError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_ROLLED_BACK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ROLLED_BACK = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("p2pupdate").strip()
        raise UsageError(f"{where}: {message}" if where else message)


class _VersionAction(argparse.Action):
    """Print the version on one line (argparse's own action wraps long paths)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_version_text())
        parser.exit(0)


def _version_text() -> str:
    return f"p2pupdate {__version__} (running from {Path(__file__).resolve().parent})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p2pupdate", description="Peer-to-peer update distribution.")
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    k = sub.add_parser("keygen", help="make an Ed25519 key pair")
    k.add_argument("--out", required=True, type=Path, metavar="KEYFILE")
    k.add_argument("--force", action="store_true", help="overwrite an existing key file")

    pk = sub.add_parser("pubkey", help="print the public key of a key file")
    pk.add_argument("keyfile", type=Path, metavar="KEYFILE")

    n = sub.add_parser("node", help="run a node")
    n.add_argument("--data-dir", type=Path, metavar="DIR")
    n.add_argument("--listen", metavar="HOST:PORT")
    n.add_argument("--peer", action="append", default=[], metavar="HOST:PORT")
    n.add_argument("--trust", action="append", default=[], metavar="PUBKEY")
    n.add_argument("--trust-threshold", type=int, metavar="K")
    n.add_argument("--target", action="append", default=[], metavar="CHANNEL=PATH")
    n.add_argument("--health-cmd", action="append", default=[], metavar="CHANNEL=CMD")
    n.add_argument("--upload-limit", metavar="RATE")
    n.add_argument("--download-limit", metavar="RATE")
    n.add_argument("--cache-size", metavar="SIZE")
    n.add_argument("--events", type=Path, metavar="FILE")
    n.add_argument("--events-max-size", metavar="SIZE")
    n.add_argument("--config", type=Path, metavar="FILE")
    n.add_argument("--check-interval", metavar="DURATION")
    n.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    n.add_argument("--log-json", action="store_true")

    pub = sub.add_parser("publish", help="sign and seed a new version")
    pub.add_argument("--key", action="append", required=True, type=Path, metavar="KEYFILE")
    pub.add_argument("--channel", required=True, metavar="NAME")
    pub.add_argument("--version", dest="pkg_version", required=True, metavar="SEMVER")
    pub.add_argument("--file", required=True, type=Path, metavar="PACKAGE")
    pub.add_argument("--peer", action="append", required=True, metavar="HOST:PORT")
    pub.add_argument("--replicas", type=int, default=1, metavar="K")
    pub.add_argument("--critical", action="store_true")
    pub.add_argument("--rollout", type=int, default=100, metavar="PCT")
    pub.add_argument("--min-version", metavar="SEMVER")
    pub.add_argument("--expires", default="30d", metavar="DURATION")
    pub.add_argument("--upload-limit", metavar="RATE")
    pub.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    pub.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")

    st = sub.add_parser("status", help="show a node's state")
    st.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    st.add_argument("--json", action="store_true")

    ap = sub.add_parser("apply", help="apply a downloaded update waiting for approval")
    ap.add_argument("channel", metavar="CHANNEL")
    ap.add_argument("--data-dir", required=True, type=Path, metavar="DIR")

    rb = sub.add_parser("rollback", help="put the previous version back, quarantine the current")
    rb.add_argument("channel", metavar="CHANNEL")
    rb.add_argument("--data-dir", required=True, type=Path, metavar="DIR")

    q = sub.add_parser("quarantine", help="manage quarantined versions")
    qsub = q.add_subparsers(dest="qcommand", metavar="ACTION", parser_class=_Parser)
    qc = qsub.add_parser("clear", help="lift the quarantine of a version")
    qc.add_argument("channel", metavar="CHANNEL")
    qc.add_argument("qversion", metavar="VERSION")
    qc.add_argument("--data-dir", required=True, type=Path, metavar="DIR")

    sim = sub.add_parser("sim", help="run a local simulation scenario")
    sim.add_argument("scenario", nargs="?", default="ten-nodes", metavar="SCENARIO")
    sim.add_argument("--out", type=Path, metavar="DIR")
    sim.add_argument("--no-live", action="store_true", help="plain log lines, no live view")

    rel = sub.add_parser("release", help="releases of p2pupdate itself")
    rsub = rel.add_subparsers(dest="rcommand", metavar="ACTION", parser_class=_Parser)
    rb_ = rsub.add_parser("build", help="build the wheelhouse archive of this checkout")
    rb_.add_argument("--out", required=True, type=Path, metavar="FILE")
    rb_.add_argument("--source", type=Path, metavar="DIR", help="checkout (default: this one)")
    rb_.add_argument("--track", default="stable", metavar="TRACK")
    rb_.add_argument("--find-links", action="append", default=[], type=Path, metavar="DIR")
    rb_.add_argument("--no-index", action="store_true", help="no package registry")
    rb_.add_argument("--no-build-isolation", action="store_true")

    se = sub.add_parser("self", help="the managed install of p2pupdate itself")
    ssub = se.add_subparsers(dest="scommand", metavar="ACTION", parser_class=_Parser)
    si = ssub.add_parser("install", help="set up or update a managed install")
    si.add_argument("--install-dir", required=True, type=Path, metavar="DIR")
    si.add_argument("--wheelhouse", type=Path, metavar="FILE")
    si.add_argument("--source", type=Path, metavar="DIR", help="checkout to build from")
    return p


def _cmd_keygen(args: argparse.Namespace) -> int:
    from p2pupdate.shell.keyfile import write_secret_key

    key = nacl.signing.SigningKey.generate()
    write_secret_key(args.out, key, force=args.force)
    print(format_pubkey(bytes(key.verify_key)))
    return EXIT_OK


def _cmd_pubkey(args: argparse.Namespace) -> int:
    from p2pupdate.shell.keyfile import load_secret_key

    key = load_secret_key(args.keyfile)
    print(format_pubkey(bytes(key.verify_key)))
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "keygen":
        return _cmd_keygen(args)
    if cmd == "pubkey":
        return _cmd_pubkey(args)
    if cmd == "node":
        from p2pupdate.shell.nodecmd import run_node_command

        return run_node_command(args)
    if cmd == "publish":
        from p2pupdate.shell.publish import run_publish_command

        return run_publish_command(args)
    if cmd in ("status", "apply", "rollback", "quarantine"):
        from p2pupdate.shell.controlcmd import run_control_command

        return run_control_command(args)
    if cmd == "release":
        from p2pupdate.selfupdate.commands import run_release_command

        return run_release_command(args)
    if cmd == "self":
        from p2pupdate.selfupdate.commands import run_self_command

        return run_self_command(args)
    if cmd == "sim":
        from p2pupdate.sim.cli import run_sim_command

        return run_sim_command(args)
    raise UsageError("no command given (try p2pupdate --help)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "quarantine" and args.qcommand is None:
            raise UsageError("p2pupdate quarantine: expected 'clear CHANNEL VERSION'")
        return _dispatch(args)
    except UsageError as exc:
        print(f"p2pupdate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except P2PUpdateError as exc:
        print(f"p2pupdate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("p2pupdate: interrupted", file=sys.stderr)
        return 130
