"""``p2pupdate node``: settings -> node, swarm, applicator, agent, control socket.

The wiring only: it builds the pieces from :class:`NodeSettings`, runs them in
one nursery, stops gracefully on SIGINT/SIGTERM (bitmaps persisted by the
download tasks' ``finally``), tells systemd READY/WATCHDOG when asked to, and
keeps a status snapshot in the data dir for ``p2pupdate status`` while the
node is down.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from p2pupdate import __version__
from p2pupdate.commands.metrics import MetricsServer
from p2pupdate.commands.reload import Reloader
from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.keys import format_pubkey
from p2pupdate.core.policy import TrustConfig
from p2pupdate.errors import UsageError
from p2pupdate.selfupdate.manager import (
    SelfUpdateOptions,
    SelfUpdater,
    detect_managed_install,
    off_message,
    reexec,
)
from p2pupdate.shell import sdnotify
from p2pupdate.shell.agent import Agent, AgentOptions
from p2pupdate.shell.control import serve_control, write_status_snapshot
from p2pupdate.shell.datadir import store_dir
from p2pupdate.shell.events import EventLog, setup_logging
from p2pupdate.shell.fleetfiles import load_admission, load_revocations
from p2pupdate.shell.install.applicator import Applicator
from p2pupdate.shell.keyfile import load_or_create_node_key
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.transport import TcpTransport
from p2pupdate.shell.nodeconfig import NodeSettings, format_hostport, load_settings
from p2pupdate.shell.tmpdirs import clean_node_tmp
from p2pupdate.shell.transfer.store import DiskStore
from p2pupdate.shell.transfer.swarm import Swarm, SwarmOptions

__all__ = ["LISTEN_FD_ENV", "run_node", "run_node_command"]

log = logging.getLogger("p2pupdate.node")

# A re-exec'd node finds its inherited listening socket here (self-update).
LISTEN_FD_ENV = "P2PUPDATE_LISTEN_FD"
# How often the status snapshot in the data dir is refreshed.
SNAPSHOT_INTERVAL = 2.0


def describe_settings(settings: NodeSettings) -> str:
    """What ``node --check-config`` prints for valid settings: the essentials, one line."""
    targets = ", ".join(f"{t.channel}={t.path}{'/' if t.is_dir else ''}" for t in settings.targets)
    return (
        f"config OK: data dir {settings.data_dir}, listen {format_hostport(*settings.listen)}, "
        f"{len(settings.peers)} peer(s), {len(settings.trust)} trusted key(s) "
        f"(threshold {settings.trust_threshold}), targets: {targets or 'none (relay only)'}"
    )


def run_node_command(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if getattr(args, "check_config", False):
        if (settings.data_dir / "node.key").exists():
            _check_admission(settings, load_or_create_node_key(settings.data_dir))
        print(describe_settings(settings))
        return 0
    setup_logging(settings.log_level, settings.log_json)
    key = load_or_create_node_key(settings.data_dir)
    _check_admission(settings, key)
    # Temporary dirs a previous run left (killed, crashed): nothing of this run exists yet.
    stale = clean_node_tmp(settings.data_dir)
    if stale:
        log.info("removed %d temporary entries left by a previous run", len(stale))
    # The boot of a self-updated release was counted by the stable launcher before this
    # process started (p2pupdate/selfupdate/launcher.py); the updater confirms it.
    updater = _self_updater(settings)
    try:
        rc = trio.run(partial(run_node, settings, key, updater, reload=lambda: load_settings(args)))
    except BaseExceptionGroup as group:
        usage = group.subgroup(UsageError)
        if usage is not None:
            raise _first(usage) from None
        raise
    if updater is not None and updater.restart_to is not None:
        log.info("re-exec into release %s", updater.restart_to)
        try:
            reexec(updater.layout.launcher, sys.argv[1:], updater.reexec_fd, LISTEN_FD_ENV)
        except OSError as exc:
            # Cannot exec: the supervisor starts the launcher, which runs `current`.
            print(f"p2pupdate: re-exec failed: {exc}; exiting 3", file=sys.stderr)
            return 3
    return rc


def _check_admission(settings: NodeSettings, key: nacl.signing.SigningKey) -> None:
    """The admission must be this node's (a certificate for another node is a mistake
    to stop at, not to find out from every peer's refusal)."""
    if settings.admission is None:
        return
    adm = load_admission(settings.admission)
    if adm.node_id != bytes(key.verify_key):
        raise UsageError(
            f"admission certificate {settings.admission} is for node "
            f"{format_pubkey(adm.node_id)}, not this node ({format_pubkey(bytes(key.verify_key))})"
        )
    if adm.expires <= time.time():
        log.warning("admission %s has expired: peers will refuse this node", settings.admission)


def _self_updater(settings: NodeSettings) -> SelfUpdater | None:
    """A self-updater when this runs from a managed install and self_update is on."""
    if not settings.self_update:
        return None
    install = detect_managed_install()
    if install is None:
        return None
    options = SelfUpdateOptions(
        track=settings.self_update_track,
        boot_attempts=settings.boot_attempts,
        wait_for_others=settings.self_update_wait,
    )
    return SelfUpdater(install, options, data_dir=settings.data_dir, emit=_log_emit)


def _log_emit(name: str, fields: dict[str, Any]) -> None:
    log.info("%s %s", name, fields)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def run_node(
    settings: NodeSettings,
    key: nacl.signing.SigningKey,
    updater: SelfUpdater | None = None,
    *,
    reload: Callable[[], NodeSettings] | None = None,
) -> int:
    node_hex = bytes(key.verify_key).hex()
    events = EventLog(settings.events, node_hex, max_size=settings.events_max_size)
    inherited = os.environ.pop(LISTEN_FD_ENV, None)
    inherited_fd = int(inherited) if inherited and inherited.isdigit() else None
    transport = TcpTransport(inherited_fd)
    options = NodeOptions(
        listen=settings.listen,
        trust=TrustConfig(
            settings.trust,
            settings.trust_threshold,
            max_validity=settings.max_announcement_validity,
        ),
        peers=settings.peers,
        data_dir=settings.data_dir,
        auto_check=settings.auto_check,
        check_interval=settings.check_interval,
        max_connections=settings.max_connections,
        target_connections=settings.target_connections,
        ban_period=settings.ban_period,
        report_interval=settings.report_interval,
        limits=dataclasses.replace(DEFAULT_LIMITS, max_reports=settings.max_reports),
        fleet=tuple(sorted(settings.fleet)),
        admission=load_admission(settings.admission).raw if settings.admission else b"",
        revocations=((load_revocations(settings.revocations).raw,) if settings.revocations else ()),
        encrypt=settings.encrypt,
    )
    node = Node(options, transport, key, emit=events.emit, rng=random.Random())
    store = DiskStore(store_dir(settings.data_dir), free_margin=settings.min_free_space)
    swarm = Swarm(
        node,
        store,
        SwarmOptions(
            max_upload_speed=settings.max_upload_speed,
            max_download_speed=settings.max_download_speed,
        ),
    )

    def emit(name: str, fields: dict[str, Any]) -> None:
        events.emit(name, **fields)

    if updater is not None:
        updater.attach(swarm, node.node_id, emit)

    applicator = Applicator(settings.data_dir, settings.backup_dir, emit, settings.max_package_size)
    agent = Agent(
        node,
        swarm,
        applicator,
        events,
        AgentOptions(
            targets=settings.targets,
            auto_download=settings.auto_download,
            cache_size=settings.cache_size,
            retry_min=settings.retry_min,
            retry_max=settings.retry_max,
        ),
    )
    agent.self_update = updater
    agent.self_update_off = off_message() if settings.self_update else "off (self_update = false)"
    reloader = Reloader(settings, reload, node, swarm, agent) if reload is not None else None
    stopper = _Stopper(updater, reloader)
    try:
        async with trio.open_nursery() as nursery:
            # Signals are watched from the very start: a SIGTERM during start-up (say,
            # while an interrupted install is being recovered) stops the node at once,
            # cancelling what runs (a health check's process group is killed).
            nursery.start_soon(stopper.watch, nursery.cancel_scope)
            try:
                await nursery.start(node.run)
            except OSError as exc:
                host, port = settings.listen
                if exc.errno == errno.EADDRINUSE:
                    raise UsageError(f"cannot listen on {host}:{port}: port in use") from None
                raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            if inherited_fd is not None:
                # The transport listens on a duplicate; this number is free again.
                os.close(inherited_fd)
            await nursery.start(
                partial(serve_control, socket_path=settings.control_socket),
                settings.data_dir,
                agent.control,
            )
            if updater is not None:
                await nursery.start(updater.run)
            await nursery.start(agent.run)
            if settings.metrics_listen is not None:
                metrics = MetricsServer(agent, events)
                host, port = settings.metrics_listen
                try:
                    metrics.start(host, port)
                except OSError as exc:
                    raise UsageError(
                        f"cannot serve metrics on {host}:{port}: {exc.strerror}"
                    ) from None
                nursery.start_soon(_stop_metrics_on_exit, metrics)
            log.info(
                "node %s listening on %s:%d",
                format_pubkey(node.node_id),
                node.listen_addr[0],
                node.listen_addr[1],
            )
            sdnotify.notify("READY=1")
            nursery.start_soon(_snapshots, settings.data_dir, agent)
            if updater is not None:
                nursery.start_soon(
                    _confirm_when_healthy, updater.confirm_healthy, node, settings.confirm_window
                )
            interval = sdnotify.watchdog_interval()
            if interval is not None:
                nursery.start_soon(_watchdog, interval)
            stopper.started = True
            await stopper.stop.wait()
            if stopper.reexec_wanted and updater is not None:
                # Safe boundary: keep the listening socket open across the exec (a
                # duplicate outlives the listener's close), then stop every task, so
                # bitmaps and state are persisted and no write is in flight.
                sock = getattr(node.listener, "socket", None)
                if sock is not None:
                    updater.reexec_fd = os.dup(sock.fileno())
                log.info("stopping for re-exec into %s", updater.restart_to)
            else:
                sdnotify.notify("STOPPING=1")
                log.info("stopping")
            nursery.cancel_scope.cancel()
    finally:
        if updater is not None:
            updater.stopped()
        try:
            write_status_snapshot(settings.data_dir, {**agent.status(), "running": False})
        except OSError as exc:
            log.warning("could not write the status snapshot: %s", exc)
        store.close()
        events.close()
    return 0


async def _confirm_when_healthy(
    confirm: Callable[[], Awaitable[None]], node: Node, window: float
) -> None:
    """Healthy (docs/applying.md): up for the confirm window with the listener and control socket
    working, or earlier on a completed peer handshake. No peers is not a failure."""
    with trio.move_on_after(window):
        await node.first_handshake.wait()
    await confirm()
    log.info("boot of %s confirmed healthy", __version__)


class _Stopper:
    """Why and when the node stops: SIGTERM/SIGINT, or a self-update re-exec request.

    SIGHUP never stops the node (its default action would): it reloads the config
    (trusted keys, targets, limits; :mod:`p2pupdate.commands.reload`) and asks the
    self-updater to look at ``current`` now, or says that self-update is off.
    Before start-up is done a stop cancels start-up itself.
    """

    def __init__(self, updater: SelfUpdater | None, reloader: Reloader | None = None) -> None:
        self.updater = updater
        self.reloader = reloader
        self.stop = trio.Event()
        self.started = False
        self.reexec_wanted = False

    async def watch(self, startup: trio.CancelScope) -> None:
        async with trio.open_nursery() as nursery:
            updater = self.updater
            if updater is not None:

                async def restart() -> None:
                    await updater.restart_requested.wait()
                    self.reexec_wanted = True
                    self.stop.set()

                nursery.start_soon(restart)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if self.reloader is not None and self.started:
                            await self.reloader.reload()
                        if updater is not None:
                            updater.check_now()
                        else:
                            log.info("SIGHUP: self-update is off (%s)", off_message())
                        continue
                    log.info("signal %d: stopping", signum)
                    self.stop.set()
                    if not self.started:
                        startup.cancel()
                    break
            nursery.cancel_scope.cancel()


async def _snapshots(data_dir: Path, agent: Agent) -> None:
    while True:
        await trio.sleep(SNAPSHOT_INTERVAL)
        try:
            await trio.to_thread.run_sync(write_status_snapshot, data_dir, agent.status())
        except OSError as exc:
            log.warning("could not write the status snapshot: %s", exc)


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.notify("WATCHDOG=1")
        await trio.sleep(interval)


async def _stop_metrics_on_exit(metrics: MetricsServer) -> None:
    try:
        await trio.sleep_forever()
    finally:
        # Shut down in a thread: shutdown() waits for the serving loop to notice.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(metrics.stop)
