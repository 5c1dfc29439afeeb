"""``p2pupdate admit`` and ``p2pupdate revoke``: the fleet key signs membership.

``admit`` writes one admission certificate per node id (``--node``, or many
ids from ``--nodes-file`` into a directory); ``revoke`` writes the fleet
key's revocation list (every node id still revoked: the latest list
replaces earlier ones). Nodes take them with ``--admission`` and
``--revocations`` (docs/security.md, "Fleet membership").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from p2pupdate.core.fleet import sign_admission, sign_revocations
from p2pupdate.core.keys import format_pubkey, parse_pubkey
from p2pupdate.core.units import parse_duration
from p2pupdate.errors import UsageError
from p2pupdate.shell.fleetfiles import write_fleet_file
from p2pupdate.shell.fsutil import read_bytes_limited
from p2pupdate.shell.keyfile import load_secret_key

__all__ = ["run_admit_command", "run_revoke_command"]

# A node-id list is one key per line; 1 MiB is over 10,000 ids.
_MAX_IDS_FILE = 1024 * 1024
# Longest admission: ten years. An admission cannot be withdrawn except by a
# revocation list, so a bound keeps a forgotten certificate from living forever.
_MAX_EXPIRES = 10 * 365 * 86400.0


def _node_ids(args: argparse.Namespace) -> list[bytes]:
    ids: list[bytes] = []
    for text in args.node or []:
        try:
            ids.append(parse_pubkey(text))
        except ValueError as exc:
            raise UsageError(f"--node: {exc}") from None
    path: Path | None = getattr(args, "nodes_file", None)
    if path is not None:
        try:
            data = read_bytes_limited(path, _MAX_IDS_FILE)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--nodes-file {path}: cannot read it: {exc}") from None
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--nodes-file {path}: not UTF-8 text") from None
        for n, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                ids.append(parse_pubkey(text))
            except ValueError as exc:
                raise UsageError(f"--nodes-file {path}:{n}: {exc}") from None
    return list(dict.fromkeys(ids))


def run_admit_command(args: argparse.Namespace) -> int:
    key = load_secret_key(args.fleet_key)
    ids = _node_ids(args)
    if not ids:
        raise UsageError("give --node NODE_ID (repeatable) or --nodes-file FILE")
    try:
        span = parse_duration(args.expires)
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    if span > _MAX_EXPIRES:
        raise UsageError("--expires: at most 3650d")
    now = int(time.time())
    out: Path = args.out
    many = args.nodes_file is not None or len(ids) > 1
    if many and not out.is_dir():
        raise UsageError(f"--out {out}: must be an existing directory for several node ids")
    for node_id in ids:
        adm = sign_admission(key, node_id, now, now + int(span))
        path = out / f"{node_id.hex()}.cert" if many else out
        write_fleet_file(path, adm.raw, force=args.force)
        print(f"{path}: {format_pubkey(node_id)} admitted until {_date(adm.expires)}")
    return 0


def run_revoke_command(args: argparse.Namespace) -> int:
    key = load_secret_key(args.fleet_key)
    ids = _node_ids(args)
    try:
        rev = sign_revocations(key, ids, int(time.time()))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    write_fleet_file(args.out, rev.raw, force=args.force)
    print(f"{args.out}: {len(rev.revoked)} node(s) revoked by {format_pubkey(rev.fleet_key)}")
    return 0


def _date(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
