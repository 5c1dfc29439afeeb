"""``p2pupdate yank``: sign a revocation of one version and hand it to the fleet.

Signs ``[channel, version, created, reason]`` with every ``--key`` (the same
trust and threshold rules as an announcement: nodes accept it only when enough
of their trusted keys signed), dials the ``--peer`` nodes as a short-lived node,
writes the yank to every peer it reaches, and exits 0 once at least one took it
(gossip carries it on; every node also sends its yanks to each new peer). Nodes
then refuse that version and roll back targets running it (event ``yanked``).
Exit 1 when no peer could be reached within ``--timeout``; 2 for a user mistake.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

import nacl.signing
import trio

from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.messages import Yank as YankMsg
from p2pupdate.core.policy import TrustConfig
from p2pupdate.core.yank import MAX_REASON, YankBody, sign_yank
from p2pupdate.errors import P2PUpdateError, TransferError, UsageError
from p2pupdate.shell.configvalues import parse_hostport
from p2pupdate.shell.keyfile import load_secret_key
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.transport import TcpTransport

__all__ = ["run_yank_command"]


def run_yank_command(args: argparse.Namespace) -> int:
    try:
        validate_channel(args.channel)
        validate_version(args.yank_version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(args.reason.encode()) > MAX_REASON:
        raise UsageError(f"--reason is longer than {MAX_REASON} bytes")
    if not args.peer:
        raise UsageError("yank needs at least one --peer HOST:PORT to hand it to")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    peers = [parse_hostport(p, allow_port_zero=False) for p in args.peer]
    keys = [load_secret_key(k) for k in args.key]
    if len({bytes(k.verify_key) for k in keys}) != len(keys) or len(keys) > 5:
        raise UsageError("give 1..5 distinct --key")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    body = YankBody(args.channel, args.yank_version, int(time.time()), args.reason)
    yank = sign_yank(body, keys)
    try:
        told = trio.run(_hand_out, yank.encode(), keys, peers, args.timeout)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    if not told:
        raise P2PUpdateError(f"no peer took the yank within {args.timeout:g} s")
    print(f"yanked {args.channel} {args.yank_version}: handed to {told} peer(s)")
    return 0


async def _hand_out(
    data: bytes,
    keys: list[nacl.signing.SigningKey],
    peers: list[tuple[str, int]],
    give_up_after: float,
) -> int:
    options = NodeOptions(
        listen=("127.0.0.1", 0),
        trust=TrustConfig(frozenset(bytes(k.verify_key) for k in keys), len(keys)),
        peers=tuple(peers),
        check_interval=1.0,
        agent="p2pupdate-yank",
        report_self=False,
    )
    node = Node(options, TcpTransport(), nacl.signing.SigningKey.generate(), rng=random.Random())
    told: set[bytes] = set()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.yanks.handle(None, data)
        with trio.move_on_after(give_up_after):
            while True:
                for nid, peer in list(node.peers.items()):
                    if nid in told:
                        continue
                    try:
                        await peer.send(YankMsg(data))
                    except TransferError:
                        continue
                    told.add(nid)
                # Every peer named on the command line reached (or a moment after the
                # first, when some are down): done.
                if len(told) >= len(peers):
                    break
                await trio.sleep(0.1)
        if told:
            await trio.sleep(0.5)  # let the writes drain before the connections close
        nursery.cancel_scope.cancel()
    return len(told)
