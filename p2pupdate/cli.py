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
from typing import Any, NoReturn

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


_DATA_DIR_HELP = (
    "the node's data dir (default: --config's data_dir, else $P2PUPDATE_DATA_DIR, else "
    "/var/lib/p2pupdate as root or $XDG_STATE_HOME/p2pupdate)"
)
_NODE_EPILOG = """\
example:
  p2pupdate node --data-dir /var/lib/p2pupdate --listen 0.0.0.0:7400 \\
      --peer 10.0.0.2:7400 --trust ed25519:3b6a... --target app/stable=/opt/app/bin/app

Every setting can also be given in the --config TOML file (see docs/operations.md and
the shipped example config); flags win over the file.
"""
_PUBLISH_EPILOG = """\
example:
  p2pupdate publish --key authority.key --channel app/stable --version 1.4.0 \\
      --file dist/app-1.4.0 --peer 10.0.0.2:7400 --peer 10.0.0.3:7400 --replicas 2
"""
_CONTROL_EPILOG = "example:\n  p2pupdate {cmd} --data-dir /var/lib/p2pupdate\n"


def _sub(
    sub: argparse._SubParsersAction[Any],
    name: str,
    help_: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _control_args(p: argparse.ArgumentParser) -> None:
    """--data-dir and --config, as every control command takes them."""
    p.add_argument("--data-dir", type=Path, metavar="DIR", help=_DATA_DIR_HELP)
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="the node's config file (for its data_dir)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p2pupdate", description="Peer-to-peer update distribution.")
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    k = _sub(
        sub, "keygen", "make an Ed25519 key pair", "example:\n  p2pupdate keygen --out a.key\n"
    )
    k.add_argument(
        "--out", required=True, type=Path, metavar="KEYFILE",
        help="where to write the secret key (mode 0600); required",
    )  # fmt: skip
    k.add_argument("--force", action="store_true", help="overwrite an existing key file")

    pk = _sub(sub, "pubkey", "print the public key of a key file")
    pk.add_argument("keyfile", type=Path, metavar="KEYFILE", help="a secret key file")

    adm = _sub(
        sub,
        "admit",
        "sign a fleet admission certificate for a node",
        "example:\n  p2pupdate admit --fleet-key fleet.key --node ed25519:... --out node1.cert\n",
    )
    adm.add_argument(
        "--fleet-key", required=True, type=Path, metavar="KEYFILE",
        help="the fleet's secret key (made with keygen); required",
    )  # fmt: skip
    adm.add_argument(
        "--node", action="append", default=[], metavar="NODE_ID",
        help="the node's id, as its status or `p2pupdate pubkey DATA_DIR/node.key` shows "
        "(repeatable)",
    )  # fmt: skip
    adm.add_argument(
        "--nodes-file", type=Path, metavar="FILE",
        help="node ids, one a line; --out is then a directory (NODE_ID.cert each)",
    )  # fmt: skip
    adm.add_argument(
        "--expires", default="365d", metavar="DURATION",
        help="how long the admission is valid (default: 365d; at most 3650d)",
    )  # fmt: skip
    adm.add_argument(
        "--out", required=True, type=Path, metavar="FILE",
        help="where to write the certificate; required",
    )  # fmt: skip
    adm.add_argument("--force", action="store_true", help="overwrite existing files")

    rv = _sub(
        sub,
        "revoke",
        "sign the fleet's revocation list (it replaces earlier lists)",
        "example:\n  p2pupdate revoke --fleet-key fleet.key --node ed25519:... --out revoked\n",
    )
    rv.add_argument(
        "--fleet-key", required=True, type=Path, metavar="KEYFILE",
        help="the fleet's secret key; required",
    )  # fmt: skip
    rv.add_argument(
        "--node", action="append", default=[], metavar="NODE_ID",
        help="a revoked node id (repeatable; list every node still revoked)",
    )  # fmt: skip
    rv.add_argument("--nodes-file", type=Path, metavar="FILE", help="revoked node ids, one a line")
    rv.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="where to write the list; required"
    )
    rv.add_argument("--force", action="store_true", help="overwrite an existing file")

    n = _sub(sub, "node", "run a node", _NODE_EPILOG)
    n.add_argument("--data-dir", type=Path, metavar="DIR", help=_DATA_DIR_HELP)
    n.add_argument(
        "--listen", metavar="HOST:PORT",
        help="address to accept peers on (port 0: any free port); required",
    )  # fmt: skip
    n.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT",
        help="a bootstrap peer (repeatable; more are learned by peer exchange)",
    )  # fmt: skip
    n.add_argument(
        "--trust", action="append", default=[], metavar="PUBKEY",
        help="a trusted publisher key, as `p2pupdate pubkey` prints it (repeatable); "
        "at least one is required",
    )  # fmt: skip
    n.add_argument(
        "--trust-threshold", type=int, metavar="K",
        help="distinct trusted signatures an announcement needs (default: 1)",
    )  # fmt: skip
    n.add_argument(
        "--target", action="append", default=[], metavar="CHANNEL=PATH",
        help="install CHANNEL's packages at PATH (a trailing / makes a directory target); "
        "applied automatically (repeatable)",
    )  # fmt: skip
    n.add_argument(
        "--health-cmd", action="append", default=[], metavar="CHANNEL=CMD",
        help="health check of a target after install (default: an executable target is "
        "run with --version; others are checked by hash)",
    )  # fmt: skip
    n.add_argument(
        "--upload-limit", metavar="RATE", help="max upload speed, e.g. 10MiB/s (default: unlimited)"
    )
    n.add_argument(
        "--download-limit", metavar="RATE",
        help="max download speed, e.g. 10MiB/s (default: unlimited)",
    )  # fmt: skip
    n.add_argument(
        "--cache-size", metavar="SIZE",
        help="cache of packages served to others (default: 1GiB; pinned ones may exceed it)",
    )  # fmt: skip
    n.add_argument(
        "--events", type=Path, metavar="FILE", help="append JSON-lines events here (default: none)"
    )
    n.add_argument(
        "--metrics-listen", metavar="HOST:PORT",
        help="serve Prometheus metrics on this address (default: off)",
    )  # fmt: skip
    n.add_argument(
        "--events-max-size", metavar="SIZE",
        help="rotate the events file to FILE.1 at this size (default: 64MiB)",
    )  # fmt: skip
    n.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config file; flags override its keys"
    )
    n.add_argument(
        "--check-interval", metavar="DURATION",
        help="time between anti-entropy rounds with peers (default: 30s)",
    )  # fmt: skip
    n.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )  # fmt: skip
    n.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    n.add_argument(
        "--fleet", action="append", default=[], metavar="PUBKEY",
        help="accept only members of this fleet (repeatable, for a key rotation); "
        "turns on encryption; needs --admission",
    )  # fmt: skip
    n.add_argument(
        "--admission", type=Path, metavar="FILE",
        help="this node's admission certificate (p2pupdate admit)",
    )  # fmt: skip
    n.add_argument(
        "--revocations", type=Path, metavar="FILE",
        help="a fleet revocation list to start with (p2pupdate revoke); gossiped to members",
    )  # fmt: skip
    n.add_argument(
        "--encrypt", action=argparse.BooleanOptionalAction, default=None,
        help="TLS 1.3 on every connection (default: on with --fleet, off without)",
    )  # fmt: skip
    n.add_argument(
        "--check-config", action="store_true",
        help="validate the config file and flags, print the result and exit (0 valid, 2 not)",
    )  # fmt: skip

    pub = _sub(sub, "publish", "sign and seed a new version", _PUBLISH_EPILOG)
    pub.add_argument(
        "--key", action="append", required=True, type=Path, metavar="KEYFILE",
        help="authority secret key to sign with (repeatable for a threshold); required",
    )  # fmt: skip
    pub.add_argument(
        "--channel", required=True, metavar="NAME", help="channel, e.g. app/stable; required"
    )
    pub.add_argument(
        "--version", dest="pkg_version", metavar="SEMVER",
        help="the new version (semver, newer than what nodes run); required unless --renew",
    )  # fmt: skip
    pub.add_argument(
        "--file", type=Path, metavar="PACKAGE",
        help="the package file, or a directory (packed as `p2pupdate pack` does); required, "
        "except with --renew on a node that has the package cached (see --data-dir)",
    )  # fmt: skip
    pub.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT",
        help="a node to hand the announcement and the package to (repeatable); "
        "required unless --dry-run",
    )  # fmt: skip
    pub.add_argument(
        "--replicas", type=int, default=1, metavar="K",
        help="exit once K peers hold verified complete copies (default: 1)",
    )  # fmt: skip
    pub.add_argument(
        "--critical", action="store_true",
        help="the download goes first and is not held back by rate limits",
    )  # fmt: skip
    pub.add_argument(
        "--rollout", type=int, default=100, metavar="PCT",
        help="percent of nodes that apply it; the rest only cache and serve (default: 100)",
    )  # fmt: skip
    pub.add_argument(
        "--min-version", metavar="SEMVER",
        help="nodes below this version do not apply it (default: none)",
    )  # fmt: skip
    pub.add_argument(
        "--expires", default="30d", metavar="DURATION",
        help="how long the announcement is valid (default: 30d)",
    )  # fmt: skip
    pub.add_argument("--upload-limit", metavar="RATE", help="max upload speed (default: unlimited)")
    pub.add_argument(
        "--fleet-key", type=Path, metavar="KEYFILE",
        help="publish into a fleet: this run admits itself with the fleet's secret key "
        "(for one day) and talks only to members; turns on encryption",
    )  # fmt: skip
    pub.add_argument(
        "--encrypt", action=argparse.BooleanOptionalAction, default=None,
        help="TLS 1.3 to the peers (default: on with --fleet-key); must match the nodes",
    )  # fmt: skip
    pub.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS",
        help="give up (exit 1) after this long (default: 600)",
    )  # fmt: skip
    pub.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT",
        help="address the publisher serves chunks on (default: 127.0.0.1:0)",
    )  # fmt: skip

    pub.add_argument(
        "--wait", choices=("applied", "downloaded"), metavar="applied|downloaded",
        help="keep following the nodes' reports until every node in the rollout applied "
        "(or downloaded) it; exit 1 if any refused or rolled back, or the rollout aborted",
    )  # fmt: skip
    pub.add_argument(
        "--wait-for", type=float, default=100.0, metavar="PCT",
        help="with --wait: succeed once this percentage of those nodes got there (default: 100)",
    )  # fmt: skip
    pub.add_argument(
        "--stages", metavar="PCT:DURATION,...",
        help="staged rollout signed into the announcement, e.g. 5%%:30m,25%%:1h,100%%",
    )  # fmt: skip
    pub.add_argument(
        "--abort-after", metavar="PCT[:MIN]",
        help="nodes stop the rollout once MIN (default 1) attempted it and PCT%% of them failed",
    )  # fmt: skip
    pub.add_argument(
        "--dry-run", action="store_true",
        help="print the announcement it would sign (JSON) and exit; nothing is sent",
    )  # fmt: skip
    pub.add_argument(
        "--renew", metavar="VERSION",
        help="re-sign VERSION (same --file) with a new --expires: nodes that have it keep it, "
        "re-imaged hosts can fetch it again",
    )  # fmt: skip
    pub.add_argument(
        "--data-dir", type=Path, metavar="DIR",
        help="with --renew and no --file: re-sign the package cached in this node's data dir "
        "(default: $P2PUPDATE_DATA_DIR, else the platform default)",
    )  # fmt: skip

    pack = _sub(
        sub,
        "pack",
        "pack a directory into a deterministic, chunk-aligned tar archive",
        "The same tree always gives the same bytes (sorted names; mtime, owner and mode\n"
        "normalized; no compression), and files of 1 MiB or more start on a 64 KiB\n"
        "boundary, so nodes reuse the chunks of unchanged files (docs/applying.md).\n\n"
        "example:\n  p2pupdate pack build/app --out app-1.4.0.tar\n",
    )
    pack.add_argument("directory", type=Path, metavar="DIR", help="the directory to pack")
    pack.add_argument(
        "--out", required=True, type=Path, metavar="FILE",
        help="where to write the archive (replaced atomically); required",
    )  # fmt: skip

    fl = _sub(sub, "fleet", "the fleet as this node sees it (from node reports)",
              _CONTROL_EPILOG.format(cmd="fleet"))  # fmt: skip
    fl.add_argument("--channel", metavar="CHANNEL", help="only this channel (default: all)")
    fl.add_argument("--json", action="store_true", help="print JSON (documented, stable)")
    _control_args(fl)

    yk = _sub(sub, "yank", "revoke a released version: nodes refuse it and roll it back")
    yk.add_argument(
        "--key", action="append", required=True, type=Path, metavar="KEYFILE",
        help="a trusted authority key (repeat for a threshold)",
    )  # fmt: skip
    yk.add_argument("--channel", required=True, metavar="CHANNEL", help="the channel")
    yk.add_argument("--version", dest="yank_version", required=True, metavar="VERSION",
                    help="the version to revoke")  # fmt: skip
    yk.add_argument(
        "--reason", default="", metavar="TEXT", help="why (shown on every node; default: none)"
    )
    yk.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT",
        help="a node to hand the revocation to (repeatable; at least one)",
    )  # fmt: skip
    yk.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS",
        help="give up (exit 1) when no peer took it within this long (default: 60)",
    )  # fmt: skip

    st = _sub(sub, "status", "show a node's state (exit 3 when it is not running)",
              _CONTROL_EPILOG.format(cmd="status"))  # fmt: skip
    _control_args(st)
    st.add_argument("--json", action="store_true", help="print JSON (documented, stable)")

    ap = _sub(sub, "apply", "apply a downloaded update waiting for approval")
    ap.add_argument("channel", metavar="CHANNEL", help="the target's channel")
    _control_args(ap)

    rb = _sub(sub, "rollback", "put the previous version back, quarantine the current")
    rb.add_argument("channel", metavar="CHANNEL", help="the target's channel")
    _control_args(rb)

    q = _sub(sub, "quarantine", "list or lift quarantined versions")
    qsub = q.add_subparsers(dest="qcommand", metavar="ACTION", parser_class=_Parser)
    qc = _sub(qsub, "clear", "lift the quarantine of a version")
    qc.add_argument("channel", metavar="CHANNEL", help="the target's channel")
    qc.add_argument("qversion", metavar="VERSION", help="the quarantined version")
    _control_args(qc)
    ql = _sub(qsub, "list", "list quarantined versions, with why and when")
    ql.add_argument("--channel", metavar="CHANNEL", help="only this channel (default: all)")
    ql.add_argument("--json", action="store_true", help="print JSON")
    _control_args(ql)

    vs = _sub(sub, "versions", "the versions of a channel this node knows, and what it holds")
    vs.add_argument("--channel", required=True, metavar="CHANNEL", help="the channel; required")
    vs.add_argument("--json", action="store_true", help="print JSON")
    _control_args(vs)

    sim = _sub(sub, "sim", "run a local simulation scenario",
               "example:\n  p2pupdate sim late-joiner --out /tmp/run\n"
               "  p2pupdate sim --list")  # fmt: skip
    sim.add_argument(
        "scenario", nargs="?", default="ten-nodes", metavar="SCENARIO",
        help="a shipped scenario's name (see --list) or a .toml file (default: ten-nodes)",
    )  # fmt: skip
    sim.add_argument(
        "--out", type=Path, metavar="DIR",
        help="where to write report.json, timeline.png and logs (default: ./sim-out-DATE)",
    )  # fmt: skip
    sim.add_argument("--no-live", action="store_true", help="plain log lines, no live view")
    sim.add_argument(
        "--list", action="store_true", help="list the shipped scenarios, one line each, and exit"
    )

    rel = _sub(sub, "release", "releases of p2pupdate itself")
    rsub = rel.add_subparsers(dest="rcommand", metavar="ACTION", parser_class=_Parser)
    rb_ = _sub(rsub, "build", "build the wheelhouse archive of this checkout")
    rb_.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="the archive to write; required"
    )
    rb_.add_argument("--source", type=Path, metavar="DIR", help="checkout (default: this one)")
    rb_.add_argument(
        "--track", default="stable", metavar="TRACK", help="release track (default: stable)"
    )
    rb_.add_argument(
        "--find-links", action="append", default=[], type=Path, metavar="DIR",
        help="a local directory of wheels for the dependencies (repeatable)",
    )  # fmt: skip
    rb_.add_argument("--no-index", action="store_true", help="no package registry")
    rb_.add_argument(
        "--no-build-isolation", action="store_true", help="build with the current environment"
    )

    se = _sub(sub, "self", "the managed install of p2pupdate itself")
    ssub = se.add_subparsers(dest="scommand", metavar="ACTION", parser_class=_Parser)
    si = _sub(ssub, "install", "set up or update a managed install")
    si.add_argument(
        "--install-dir", required=True, type=Path, metavar="DIR",
        help="the managed install's directory; required",
    )  # fmt: skip
    si.add_argument(
        "--wheelhouse", type=Path, metavar="FILE", help="a release archive to install from"
    )
    si.add_argument("--source", type=Path, metavar="DIR", help="checkout to build from")

    co = _sub(
        sub, "completion", "print shell completion code",
        "example:\n  p2pupdate completion bash > /etc/bash_completion.d/p2pupdate\n",
    )  # fmt: skip
    co.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete for")
    _sub(
        sub, "manpage", "print the manual page (roff)",
        "example:\n  p2pupdate manpage > /usr/local/share/man/man1/p2pupdate.1\n",
    )  # fmt: skip
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
    if cmd == "admit":
        from p2pupdate.commands.admitcmd import run_admit_command

        return run_admit_command(args)
    if cmd == "revoke":
        from p2pupdate.commands.admitcmd import run_revoke_command

        return run_revoke_command(args)
    if cmd == "node":
        from p2pupdate.commands.nodecmd import run_node_command

        return run_node_command(args)
    if cmd == "publish":
        from p2pupdate.commands.publish import run_publish_command

        return run_publish_command(args)
    if cmd in ("status", "apply", "rollback", "quarantine", "versions"):
        from p2pupdate.commands.controlcmd import run_control_command

        return run_control_command(args)
    if cmd == "pack":
        from p2pupdate.shell.install.pack import pack_directory

        count = pack_directory(args.directory, args.out)
        print(f"packed {count} entries of {args.directory} into {args.out}")
        return EXIT_OK
    if cmd == "fleet":
        from p2pupdate.commands.fleetcmd import run_fleet_command

        return run_fleet_command(args)
    if cmd == "yank":
        from p2pupdate.commands.yankcmd import run_yank_command

        return run_yank_command(args)
    if cmd == "release":
        from p2pupdate.commands.selfupdatecmd import run_release_command

        return run_release_command(args)
    if cmd == "self":
        from p2pupdate.commands.selfupdatecmd import run_self_command

        return run_self_command(args)
    if cmd == "completion":
        from p2pupdate.commands.completion import completion_script

        print(completion_script(args.shell), end="")
        return EXIT_OK
    if cmd == "manpage":
        from p2pupdate.commands.completion import manpage

        print(manpage(build_parser()), end="")
        return EXIT_OK
    if cmd == "sim":
        from p2pupdate.sim.cli import run_sim_command

        return run_sim_command(args)
    raise UsageError("no command given (try p2pupdate --help)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None:
        # A shell asking for completions (see `p2pupdate completion`): answer and exit.
        # Does nothing unless the shell code set _ARGCOMPLETE.
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
        if args.command == "quarantine" and args.qcommand is None:
            raise UsageError("p2pupdate quarantine: expected 'clear CHANNEL VERSION' or 'list'")
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
