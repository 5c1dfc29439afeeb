"""``p2pupdate publish``: sign an announcement and seed the package once.

The publisher is a short-lived node: it hashes the package (id and chunk
table), signs the announcement with every ``--key``, dials the given peers,
gossips the announcement, and serves chunks super-seeding style (distinct
chunks to distinct peers, so it uploads little more than one copy) until
``--replicas`` peers hold verified complete copies: a peer counts once it has
answered a challenge for randomly chosen chunks with data that matches the chunk
table (``core/replicas.py``), never on its COMPLETE alone. It then prints what it
uploaded and exits 0; on timeout it exits 1 with one line.

Run again after an earlier publish of the same file died mid-rollout, it resumes:
the nodes' running downloads send their bitfields as soon as it connects, its
super-seeder starts from them and hands out only chunks no peer holds (until
none is missing), and the summary says how many chunks the swarm held already
and how many were missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import nacl.signing
import trio

from p2pupdate.commands.renewsource import find_cached_release
from p2pupdate.commands.samebytes import SameBytesWarning, history_path
from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core import reports
from p2pupdate.core.announcement import (
    FORMAT_STAGED,
    FORMAT_VERSION,
    Announcement,
    AnnouncementBody,
    sign_announcement,
    validate_channel,
    validate_version,
)
from p2pupdate.core.chunks import chunk_count
from p2pupdate.core.fleet import sign_admission
from p2pupdate.core.keys import format_pubkey
from p2pupdate.core.messages import Announce, Chunk, Message, Reject
from p2pupdate.core.messages import Request as RequestMsg
from p2pupdate.core.policy import TrustConfig, in_rollout
from p2pupdate.core.reasons import Reason
from p2pupdate.core.replicas import ReplicaProof
from p2pupdate.core.rollout import WaitVerdict, parse_abort, parse_stages, wait_verdict
from p2pupdate.core.units import format_size, parse_duration, parse_rate
from p2pupdate.errors import P2PUpdateError, TransferError, UsageError
from p2pupdate.shell.configvalues import parse_hostport
from p2pupdate.shell.datadir import resolve_data_dir
from p2pupdate.shell.install.pack import pack_directory
from p2pupdate.shell.keyfile import load_secret_key
from p2pupdate.shell.net.node import Node, NodeOptions, PeerConn
from p2pupdate.shell.net.transport import TcpTransport
from p2pupdate.shell.transfer.content import hash_file_async
from p2pupdate.shell.transfer.store import DiskStore
from p2pupdate.shell.transfer.swarm import Swarm, SwarmOptions

__all__ = ["PublishTimeout", "run_publish_command"]

log = logging.getLogger("p2pupdate.publish")


class PublishTimeout(P2PUpdateError):
    pass


def _check_args(args: argparse.Namespace) -> list[nacl.signing.SigningKey]:
    try:
        validate_channel(args.channel)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    renew = getattr(args, "renew", None)
    if renew is not None:
        # A renewal is the same version and package with a later created and expires:
        # nodes take it as the replacement of the announcement they hold.
        if args.pkg_version is not None and args.pkg_version != renew:
            raise UsageError(f"--renew {renew} and --version {args.pkg_version} disagree")
        args.pkg_version = renew
    if args.pkg_version is None:
        raise UsageError("--version is required (or --renew VERSION)")
    if not args.peer and not getattr(args, "dry_run", False):
        raise UsageError("--peer is required (at least one node to hand the release to)")
    for value in (args.pkg_version, args.min_version):
        if value is not None:
            try:
                validate_version(value)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    if not 1 <= args.replicas <= 10000:
        raise UsageError(f"--replicas must be at least 1 (got {args.replicas})")
    if not 0 <= args.rollout <= 100:
        raise UsageError(f"--rollout must be 0..100 (got {args.rollout})")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if not 0 < args.wait_for <= 100:
        raise UsageError(f"--wait-for must be in 0..100 (got {args.wait_for:g})")
    try:
        args.stage_list = parse_stages(args.stages) if args.stages else ()
        args.abort_rule = parse_abort(args.abort_after) if args.abort_after else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.stage_list and args.rollout != 100:
        raise UsageError("give --stages or --rollout, not both (--rollout N is one stage)")
    try:
        args.expires_seconds = parse_duration(args.expires)
        args.upload_rate = parse_rate(args.upload_limit) if args.upload_limit else 0
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.expires_seconds > DEFAULT_LIMITS.max_validity:
        # Nodes refuse it (validity_too_long): say so now rather than time out.
        raise UsageError(
            f"--expires {args.expires} is longer than the "
            f"{DEFAULT_LIMITS.max_validity // 86400} days nodes accept "
            "(max_announcement_validity); re-sign before expiry instead"
        )
    args.peer_addrs = [parse_hostport(p, allow_port_zero=False) for p in args.peer]
    args.listen_addr = parse_hostport(args.listen)
    keys = [load_secret_key(k) for k in args.key]
    args.expect_package_id = None
    if args.file is None:
        if renew is None:
            raise UsageError("--file is required (or --renew VERSION to re-sign a cached package)")
        data_dir, _ = resolve_data_dir(getattr(args, "data_dir", None), None)
        cached = find_cached_release(data_dir, args.channel, renew, keys)
        args.file, args.expect_package_id = cached.path, cached.package_id
    path: Path = args.file
    if not path.exists():
        raise UsageError(f"package file {path} does not exist")
    # A directory is packed by run_publish_command (shell.install.pack).
    args.pack_dir = path if path.is_dir() and args.expect_package_id is None else None
    if args.pack_dir is None and not path.is_file():
        raise UsageError(f"package file {path} is not a regular file")
    try:
        if args.pack_dir is None:
            with open(path, "rb") as f:
                f.read(1)
    except OSError as exc:
        raise UsageError(f"cannot read package file {path}: {exc.strerror}") from None
    if getattr(args, "fleet_key", None) is not None:
        load_secret_key(args.fleet_key)  # a wrong key file is a usage error, now
    if len({bytes(k.verify_key) for k in keys}) != len(keys):
        raise UsageError("the same key was given twice")
    if len(keys) > 5:
        raise UsageError("at most 5 --key")
    return keys


def _fleet_options(args: argparse.Namespace, key: nacl.signing.SigningKey) -> dict[str, Any]:
    """Membership of this publish run: ``--fleet-key`` admits its one-off node key for a
    day (docs/security.md); ``--encrypt`` as for a node."""
    out: dict[str, Any] = {"encrypt": getattr(args, "encrypt", None)}
    fleet_key_file = getattr(args, "fleet_key", None)
    if fleet_key_file is not None:
        fleet_key = load_secret_key(fleet_key_file)
        now = int(time.time())
        adm = sign_admission(fleet_key, bytes(key.verify_key), now - 60, now + 86400)
        out["fleet"] = (bytes(fleet_key.verify_key),)
        out["admission"] = adm.raw
    return out


def run_publish_command(args: argparse.Namespace) -> int:
    keys = _check_args(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.pack_dir is None:
            return trio.run(_publish_until_stopped, args, keys)
        # A directory: packed deterministically (docs/applying.md), then published.
        with tempfile.TemporaryDirectory(prefix="p2pupdate-pack-") as tmp:
            args.file = Path(tmp) / "package.tar"
            with _stop_signals_interrupt():
                pack_directory(args.pack_dir, args.file)
            return trio.run(_publish_until_stopped, args, keys)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, (P2PUpdateError, KeyboardInterrupt)):
            raise leaf from None  # one line (Ctrl-C: "interrupted", exit 130), no traceback
        raise


def _stop_signals() -> list[signal.Signals]:
    """What stops ``publish`` like Ctrl-C: SIGTERM (``timeout``, a service manager) and
    SIGHUP, unless SIGHUP came in ignored (``nohup``: then it stays ignored)."""
    sigs = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Outside trio (packing a directory): a stop signal raises KeyboardInterrupt, so the
    temporary files are removed on the way out (exit 130, as for Ctrl-C)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in _stop_signals()}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


async def _publish_until_stopped(
    args: argparse.Namespace, keys: list[nacl.signing.SigningKey]
) -> int:
    """:func:`_publish`, stopped by a stop signal as by Ctrl-C: its tasks are cancelled,
    its temporary store removed, and it exits 130 with one line."""

    async def watch(signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            raise KeyboardInterrupt

    with trio.open_signal_receiver(*_stop_signals()) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, signals)
            rc = await _publish(args, keys)
            nursery.cancel_scope.cancel()
    return rc


class _Progress:
    """A rich bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, replicas: int) -> None:
        self.total = total
        self.replicas = replicas
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._last_bytes = 0
        self._bar = None
        if self.tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]publish[/]"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[replicas]}"),
                transient=False,
            )
            self._task = self._bar.add_task("upload", total=max(total, 1), replicas="")
            self._bar.start()

    def update(self, uploaded: int, done: int, peers: int, rate: float) -> None:
        text = f"{done}/{self.replicas} replicas, {peers} peers"
        if self._bar is not None:
            self._bar.update(self._task, completed=min(uploaded, self.total), replicas=text)
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0:
            # The rate over the whole interval since the last line, not the caller's last
            # 0.1 s (uploads come in bursts: that read 0.0 MiB/s half the time). The
            # total can pass the package size (chunks go to several peers): say the ratio.
            if self._last_line:
                rate = (uploaded - self._last_bytes) / (now - self._last_line)
            self._last_line, self._last_bytes = now, uploaded
            ratio = uploaded / self.total if self.total else 0.0
            print(
                f"publish: uploaded {format_size(uploaded)} ({ratio:.2f}x the "
                f"{format_size(self.total)} package) at {rate / 1048576:.1f} MiB/s, {text}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class _ProofService:
    """The swarm, with the CHUNKs and REJECTs that answer replica challenges taken out.

    Everything else goes to the swarm unchanged. A peer that answers a challenge with
    a wrong chunk is refuted (never counted) and banned like any sender of bad data.
    """

    def __init__(self, swarm: Swarm, proof: ReplicaProof[bytes], package_id: bytes) -> None:
        self.swarm = swarm
        self.proof = proof
        self.package_id = package_id

    def on_peer_up(self, peer: PeerConn) -> None:
        self.swarm.on_peer_up(peer)

    def on_peer_down(self, peer: PeerConn) -> None:
        self.proof.peer_gone(peer.node_id)
        self.swarm.on_peer_down(peer)

    async def run_peer(self, peer: PeerConn) -> None:
        await self.swarm.run_peer(peer)

    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        if isinstance(msg, (Chunk, Reject)) and msg.package_id == self.package_id:
            now = trio.current_time()
            if isinstance(msg, Chunk):
                if self.proof.on_chunk(peer.node_id, msg.index, msg.data, now):
                    if self.proof.is_refuted(peer.node_id):
                        log.warning("%s claimed a copy it does not hold", peer.label)
                        self.swarm.node.ban(peer.addr, peer.node_id, Reason.FALSE_REPLICA_CLAIM)
                    return True
            elif self.proof.on_reject(peer.node_id, msg.index, now):
                return True
        if (
            isinstance(msg, RequestMsg)
            and msg.package_id == self.package_id
            and self.proof.on_request(peer.node_id, msg.index, trio.current_time())
        ):
            peer.post(Reject(msg.package_id, msg.index))  # not our data as its proof
            return True
        return await self.swarm.handle(peer, msg)


class _RolloutWatch:
    """``--wait``: follows the reports of the nodes in the rollout (core.rollout decides)."""

    def __init__(self, node: Node, ann: Announcement, args: argparse.Namespace) -> None:
        self.node = node
        self.ann = ann
        self.goal: str = args.wait
        self.percent: float = args.wait_for
        self._last_line = 0.0
        self.tty = sys.stderr.isatty()

    def tally(self) -> dict[bytes, tuple[str, str, str]]:
        b = self.ann.body
        # A staged rollout is waited for to its end: the nodes of the last stage.
        pct = b.stages[-1][0] if b.stages else b.rollout
        everyone = reports.rollout_tally(self.node.reports.book.all(), b.channel, b.version)
        return {nid: t for nid, t in everyone.items() if in_rollout(nid, b.version, pct)}

    def aborted(self) -> bool:
        b = self.ann.body
        if b.abort is None:
            return False
        failed, attempted = reports.abort_tally(self.node.reports.book.all(), b.channel, b.version)
        return reports.AbortRule(*b.abort).fired(failed, attempted)

    def verdict(self) -> WaitVerdict:
        return wait_verdict(
            self.tally(), goal=self.goal, percent=self.percent, aborted=self.aborted()
        )

    def finished(self) -> bool:
        return self.verdict().finished

    def live(self, rate: float) -> None:
        now = time.monotonic()
        if now - self._last_line < 1.0:
            return
        self._last_line = now
        c = self.verdict().counts
        total = sum(c.values())
        line = (
            f"publish: {c.get('applied', 0)}/{total} applied, "
            f"{c.get('downloading', 0) + c.get('downloaded', 0)} downloading, "
            f"{c.get('refused', 0)} refused, {c.get('failed', 0)} rolled back, "
            f"{c.get('aborted', 0)} aborted, {rate / 1e6:.1f} MB/s"
        )
        end = "\r" if self.tty else "\n"
        print(line, file=sys.stderr, end=end, flush=True)


def describe_announcement(ann: Announcement) -> dict[str, object]:
    """What ``publish --dry-run`` prints: every signed field, the signers, the sizes."""
    b = ann.body
    return {
        "announcement_id": ann.id.hex(),
        "format_version": b.format_version,
        "channel": b.channel,
        "version": b.version,
        "package_id": b.package_id.hex(),
        "size": b.size,
        "chunk_size": b.chunk_size,
        "table_root": b.table_root.hex(),
        "created": b.created,
        "expires": b.expires,
        "min_version": b.min_version,
        "critical": b.critical,
        "rollout": b.rollout,
        "stages": [list(s) for s in b.stages],
        "abort": list(b.abort) if b.abort is not None else None,
        "signers": [format_pubkey(k) for k, _ in ann.signatures],
        "encoded_bytes": len(ann.encode()),
    }


async def _publish(args: argparse.Namespace, keys: list[nacl.signing.SigningKey]) -> int:
    started = time.monotonic()
    info = await hash_file_async(args.file)
    expected = getattr(args, "expect_package_id", None)
    if expected is not None and info.package_id != expected:
        raise UsageError(
            f"the cached package {args.file} does not hash to the package id its "
            f"announcement names ({expected.hex()[:16]}...): the cache is damaged; give --file"
        )
    now = int(time.time())
    body = AnnouncementBody(
        channel=args.channel,
        version=args.pkg_version,
        package_id=info.package_id,
        size=info.size,
        table_root=info.root,
        created=now,
        expires=now + int(args.expires_seconds),
        min_version=args.min_version,
        critical=bool(args.critical),
        rollout=args.rollout,
        format_version=FORMAT_STAGED if args.stage_list or args.abort_rule else FORMAT_VERSION,
        stages=args.stage_list,
        abort=args.abort_rule,
    )
    ann = sign_announcement(body, keys)
    same = SameBytesWarning(
        args.channel, args.pkg_version, args.pack_dir or args.file, info.package_id, history_path()
    )
    same.check_history()
    if getattr(args, "dry_run", False):
        print(json.dumps(describe_announcement(ann), indent=2, sort_keys=True))
        return 0
    key = nacl.signing.SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="p2pupdate-publish-") as tmp:
        options = NodeOptions(
            listen=args.listen_addr,
            trust=TrustConfig(frozenset(bytes(k.verify_key) for k in keys), len(keys)),
            peers=tuple(args.peer_addrs),
            target_connections=max(8, len(args.peer_addrs)),
            check_interval=1.0,
            agent="p2pupdate-publish",
            report_self=False,  # it listens to the nodes' reports (--wait), says nothing
            **_fleet_options(args, key),
        )
        node = Node(options, TcpTransport(), key, rng=random.Random())
        node.book.on_genuine = same.check_announcement
        same.record()
        store = DiskStore(Path(tmp) / "store")
        swarm = Swarm(node, store, SwarmOptions(max_upload_speed=args.upload_rate, super_seed=True))
        swarm.set_table(ann, list(info.chunk_hashes))
        # A replica is a peer that was sent this announcement *and* proved it holds a
        # verified copy. COMPLETE alone is a claim anyone can make: the peer must answer
        # a challenge for randomly chosen chunks, checked against the table
        # (core/replicas.py). A peer that already had the package (a re-signed
        # announcement widening the rollout or extending the expiry) says COMPLETE at
        # once, before it has heard of it, and exiting then would leave it unannounced.
        completes: set[bytes] = set()
        told: set[bytes] = set()
        telling: set[bytes] = set()
        replicas: set[bytes] = set()
        done = trio.Event()
        announce = Announce(ann.encode())
        proof: ReplicaProof[bytes] = ReplicaProof(list(info.chunk_hashes), random.Random())
        node.package_service = _ProofService(swarm, proof, info.package_id)

        def challenge(nid: bytes) -> None:
            peer = node.peers.get(nid)
            if peer is None:
                return
            for index in proof.claim(nid, trio.current_time()):
                peer.post(RequestMsg(info.package_id, index))

        def count() -> None:
            for nid in completes & told:
                challenge(nid)
            replicas.update(proof.proven & told)
            if len(replicas) >= args.replicas:
                done.set()

        def on_complete(package_id: bytes, peer: PeerConn) -> None:
            if package_id == info.package_id:
                completes.add(peer.node_id)
                count()

        async def tell(peer: PeerConn) -> None:
            # Written to the socket before we count the peer, so it arrives even if we
            # exit right after (closing a TCP connection delivers what was sent).
            try:
                await peer.send(announce)
            except TransferError:
                telling.discard(peer.node_id)  # gone; tell it again if it comes back
                return
            told.add(peer.node_id)
            count()

        swarm.on_complete_from_peer = on_complete
        progress = _Progress(info.size, args.replicas)
        watch: _RolloutWatch | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(node.run)
                except OSError as exc:
                    raise UsageError(f"cannot listen on {args.listen}: {exc.strerror}") from None
                await swarm.add_complete(ann, path=args.file)
                await node.inject(ann)
                deadline = trio.current_time() + args.timeout
                last_bytes, last_t = 0, trio.current_time()
                if args.wait:
                    watch = _RolloutWatch(node, ann, args)
                while not (done.is_set() if watch is None else watch.finished()):
                    for nid, peer in list(node.peers.items()):
                        if nid not in telling:
                            telling.add(nid)
                            nursery.start_soon(tell, peer)
                    for nid in proof.due(trio.current_time()):
                        challenge(nid)
                    count()
                    with trio.move_on_after(0.1):
                        if watch is None:
                            await done.wait()
                        else:
                            await trio.sleep(0.1)
                    now_t = trio.current_time()
                    rate = (swarm.bytes_uploaded - last_bytes) / max(now_t - last_t, 1e-6)
                    last_bytes, last_t = swarm.bytes_uploaded, now_t
                    if watch is not None:
                        watch.live(rate)
                    else:
                        progress.update(swarm.bytes_uploaded, len(replicas), len(node.peers), rate)
                    if now_t > deadline and watch is not None:
                        print(f"publish: {watch.verdict().summary}", file=sys.stderr)
                        raise PublishTimeout(
                            f"timed out after {args.timeout:g} s waiting for nodes to have "
                            f"{args.wait} {args.pkg_version}: {watch.verdict().summary}"
                        )
                    if now_t > deadline:
                        unproven = len(completes - replicas)
                        raise PublishTimeout(
                            f"timed out after {args.timeout:g} s: {len(replicas)} of "
                            f"{args.replicas} peers hold verified copies "
                            f"({len(node.peers)} connected"
                            + (f", {unproven} claimed a copy without proof" if unproven else "")
                            + ")"
                        )
                nursery.cancel_scope.cancel()
        finally:
            progress.close()
            store.close()
    elapsed = time.monotonic() - started
    if watch is not None:
        verdict = watch.verdict()
        word = "done" if verdict.ok else "FAILED"
        aborted = " (rollout aborted)" if watch.aborted() else ""
        print(
            f"publish {word}{aborted}: {args.channel} {args.pkg_version}: {verdict.summary}; "
            f"uploaded {swarm.bytes_uploaded} bytes in {elapsed:.1f} s"
        )
        return 0 if verdict.ok else 1
    ratio = swarm.bytes_uploaded / info.size if info.size else 0.0
    # Resuming a rollout (this publish run again after the first one died): the super-
    # seeder handed out only what no peer held, so say how much the swarm had already.
    seeder = swarm.packages[info.package_id].seeder
    nchunks = chunk_count(info.size)
    held = seeder.swarm_held if seeder is not None else 0
    missing = nchunks - held
    missing_bytes = min(info.size, missing * DEFAULT_LIMITS.chunk_size)
    print(
        f"published {args.channel} {args.pkg_version} ({info.package_id.hex()}): "
        f"{len(replicas)} replicas; the swarm held {held} of {nchunks} chunks already, "
        f"{missing} ({format_size(missing_bytes)}) were missing and came from here; "
        f"uploaded {swarm.bytes_uploaded} bytes "
        f"({ratio:.2f}x the package) in {elapsed:.1f} s"
    )
    return 0
