"""Running a scenario: real ``p2pupdate node`` and ``publish`` processes, faults, the end.

:class:`Harness` drives one run through the commands' public contract only
(command-line flags, config file keys, the ``--events`` JSON-lines files, the
exit codes and the line ``publish`` prints), never through internal APIs:

1. make a temporary work dir, an authority key (``p2pupdate keygen``), the
   target app of each version (``p2pupdate.sim.app``), one data dir, config
   file and installed v1 app per node; on ``netns``, the namespaces;
2. start the nodes on free ports (127.0.0.1, or one namespace each) with the
   bootstrap peers of the scenario's topology, and wait until each listens;
3. publish each version at its time; follow every node's events; inject the
   faults (kill -9 at a progress, restart later; late joiners; the
   adversarial peer); refresh the view;
4. stop when every node has settled on the last publication (applied, or
   rolled back and quarantined), on timeout, or on Ctrl-C/SIGTERM/SIGHUP;
5. always, in ``finally``: stop every process (process groups, SIGTERM then
   SIGKILL), tear the namespaces down, read each target's final bytes, remove
   the work dir (the caller then writes report.json and timeline.png).

The work dir holds an owner file with the harness's pid; a harness killed by
SIGKILL leaves its dir behind (its children die with it, see
``p2pupdate.sim.procs``) and the next run removes it.

What the figures mean is ``p2pupdate.sim.report``; the display is
``p2pupdate.sim.view``.

The parts live beside this module: :mod:`.workdir` (work dir, ports, node
specs), :mod:`.harnessbase` (state, commands, signals), :mod:`.preparing` (step
1-2) and :mod:`.driver` (publishing, faults, reaping); :class:`Harness` runs the
main loop, decides when the run is settled and finishes it. They share one
state (the nodes, their tracks and children), so they are mixins of one class.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import blake3
import trio

from p2pupdate.errors import P2PUpdateError
from p2pupdate.sim.driver import Driver
from p2pupdate.sim.records import RunRecord
from p2pupdate.sim.scenario import (
    AdversaryFault,
    IntruderFault,
    Kill9Fault,
    PublisherKillFault,
)
from p2pupdate.sim.selfupdate import SelfUpdateRun
from p2pupdate.sim.workdir import (
    OWNER_FILE,
    WORK_PREFIX,
    NodeSpec,
    SimInterrupted,
    collapse,
    free_ports,
    last_line,
    sweep_stale_workdirs,
)

__all__ = ["Harness", "SimInterrupted", "free_ports", "sweep_stale_workdirs"]

_TICK = 0.1
_REFRESH = 0.25
# How long a settled run waits for publishers still running to exit on their own (they
# exit once enough replicas are confirmed; on a loaded machine that can lag the nodes).
# Only a publisher that is stuck past this is stopped, and the report shows its exit code.
_PUBLISH_GRACE = 60.0


class Harness(Driver):
    """One run of one scenario; :meth:`run` returns the finished :class:`RunRecord`."""

    # -- the whole run ------------------------------------------------------------
    async def run(self) -> RunRecord:
        """Run the scenario to its end; cleanup happens whatever goes wrong."""
        old = self._install_signal_handlers()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "logs").mkdir(exist_ok=True)
            (self.out / "events").mkdir(exist_ok=True)
            sweep_stale_workdirs()
            self.work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
            (self.work / OWNER_FILE).write_text(f"{os.getpid()}\n")
            # Children's own temporary files (the publisher's store, ...) go inside
            # the work dir, so they go with it even if a child is killed.
            (self.work / "tmp").mkdir()
            self._env["TMPDIR"] = str(self.work / "tmp")
            self.view.start()
            try:
                await self._run_inner()
            except BaseExceptionGroup as group:
                raise collapse(group) from None
        except (KeyboardInterrupt, SimInterrupted):
            self.rec.interrupted = True
            self.view.note("interrupted: stopping every process")
        except P2PUpdateError as exc:
            self.rec.error = str(exc)
            raise
        finally:
            try:
                self._finish()
            finally:
                self.view.stop()
                self._restore_signal_handlers(old)
        return self.rec

    async def _run_inner(self) -> None:
        if self.sc.self_update is not None:
            assert self.work is not None
            logs = self.out / "logs"
            self.su = SelfUpdateRun(self.sc, self.work, self.sup, self._env, logs, self._check_stop)
            self.packages = await self.su.prepare()
            size = self.packages[self.sc.final_publication.version].stat().st_size
            self.rec.scenario = replace(self.sc, package_size=size)
        self._prepare()
        for spec in self.nodes:
            if not spec.late:
                self._start_node(spec)
        await self._wait_ready([s for s in self.nodes if not s.late])
        if self.su is not None:
            await self.su.wait_registered([s.index for s in self.nodes])
        self.rec.ready = time.time()
        self.view.note(f"{sum(not s.late for s in self.nodes)} nodes up")
        async with trio.open_nursery() as nursery:
            adv = self.sc.faults_of(AdversaryFault)
            if adv:
                await self._start_adversary(nursery, adv[0])
            intruders = self.sc.faults_of(IntruderFault)
            if intruders:
                await self._start_intruder(nursery, intruders[0])
            await self._loop()
            nursery.cancel_scope.cancel()

    # -- the main loop ------------------------------------------------------------
    async def _loop(self) -> None:
        sc = self.sc
        last_refresh = 0.0
        last_status = 0.0
        published = 0
        settled_at: float | None = None
        while True:
            self._check_stop()
            now = time.time()
            self._poll_events()
            self._reap()
            while (
                published < len(sc.publications)
                and now >= self.rec.ready + sc.publications[published].at
            ):
                self._publish(published)
                published += 1
            self._late_joins(now, published)
            for i, due in list(self.republish_due.items()):
                if now >= due:
                    del self.republish_due[i]
                    self._publish(i)
                    self._publisher_restarted(i)
            for i, due in list(self.restart_due.items()):
                if now >= due:
                    del self.restart_due[i]
                    self._restart(i)
            if now - last_status >= 1.0:
                last_status = now
                self._read_peer_counts()
            if now - last_refresh >= _REFRESH:
                last_refresh = now
                self.view.refresh(self.tracks, self.addresses, self._header(now))
            if published == len(sc.publications) and self._settled():
                if settled_at is None:
                    settled_at = now
                if self._publishers_running() and now - settled_at < _PUBLISH_GRACE:
                    await trio.sleep(_TICK)
                    continue
                # A moment for trailing events (quarantined after rolled_back, ...).
                await trio.sleep(0.3)
                self._poll_events()
                break
            failed = self._failed_publication(now)
            if failed:
                self.rec.error = failed
                self.view.note(failed)
                break
            if now - self.rec.ready > sc.timeout:
                self.rec.timed_out = True
                self.view.note(f"timed out after {sc.timeout:.0f}s")
                break
            await trio.sleep(_TICK)

    def _publishers_running(self) -> bool:
        """Whether a publish process has not exited yet (its exit code is not known)."""
        return any(record.ended is None and child.alive() for record, child in self.pub_children)

    def _failed_publication(self, now: float) -> str:
        """Why the run cannot go on: a publish that failed before anyone heard of it."""
        for record in self.publishes:
            if record.exit_code in (None, 0) or record.ended is None or now < record.ended + 3.0:
                continue
            if record.killed:
                continue
            if not any(t.first("announcement_received", record.version) for t in self.tracks):
                log = self.out / "logs" / f"{record.log_name}.log"
                return (
                    f"publish {record.version} failed (exit {record.exit_code}) and no node "
                    f"received its announcement: {last_line(log)}"
                )
        return ""

    def _header(self, now: float) -> str:
        sc = self.sc
        done = sum(1 for t in self.tracks if t.settled(sc.final_publication.version))
        return (
            f"p2pupdate sim {sc.name}: {sc.nodes} nodes, {sc.network}, "
            f"{done}/{sc.nodes} settled, {now - self.started:.1f}s"
        )

    def _poll_events(self) -> None:
        for spec, tail, track in zip(self.nodes, self.tails, self.tracks, strict=True):
            for ev in tail.poll():
                track.feed(ev)
                if self.su is not None:
                    self.su.feed(track, ev)
                self.view.event(track, ev)
                if ev.get("event") == "download_progress":
                    self._maybe_kill(spec, track)
                    self._maybe_kill_publisher()

    def _settled(self) -> bool:
        """Every node settled on the last publication, every fault done."""
        if self.su is not None:
            return not self.restart_due and self.su.settled(self.tracks, self._pids())
        if any(not rec.fired for _, rec in self.faults):
            # A kill that cannot fire any more (the node finished first) does not hold us.
            for fault, rec in self.faults:
                if rec.fired:
                    continue
                if isinstance(fault, Kill9Fault):
                    track = self.tracks[fault.node]
                    if track.settled(self.sc.final_publication.version):
                        continue
                if isinstance(fault, PublisherKillFault):
                    final = self.sc.final_publication.version
                    if all(t.settled(final) for t in self.tracks):
                        continue
                return False
        if self.restart_due or self.republish_due:
            return False
        final = self.sc.final_publication.version
        for spec, track in zip(self.nodes, self.tracks, strict=True):
            child = self.children.get(spec.index)
            if child is None:
                return False
            if not child.alive() and spec.index not in self.killed:
                continue  # crashed: it will not settle; the report says so
            if not track.settled(final):
                return False
        return True

    def _read_peer_counts(self) -> None:
        """Peers column: from peer events when the node emits them, else its status file."""
        for spec, track in zip(self.nodes, self.tracks, strict=True):
            if track.connected or track.process != "running":
                continue
            path = spec.data_dir / "status.json"
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            peers = data.get("peers") if isinstance(data, dict) else None
            if isinstance(peers, list):
                track.peers = len(peers)

    # -- the end ----------------------------------------------------------------------
    @trio.lowlevel.enable_ki_protection
    def _finish(self) -> None:
        """Stop everything, record the final state, clean up. Never raises past cleanup."""
        rec = self.rec
        try:
            for spec in self.nodes:
                child = self.children.get(spec.index)
                if child is not None:
                    rec.alive_at_end[spec.name] = child.alive()
            if self.adversary is not None:
                rec.adversary = self.adversary.stats.as_dict()
            if self.intruder is not None:
                rec.intruder = self.intruder.stats.as_dict()
            if self.su is not None:  # before the nodes stop: they deregister
                pids = self._pids()
                rec.self_update = self.su.snapshot([s.name for s in self.nodes], pids)
                for spec in self.nodes:
                    rec.final_versions[spec.name] = self.su.running_release(
                        spec.index, pids.get(spec.index)
                    )
        finally:
            self.sup.close()
            try:
                if self.net is not None:
                    self.net.teardown()
            finally:
                try:
                    for record, child in self.pub_children:
                        if record.ended is None:
                            self._publish_done(record, child)
                    self._poll_events()
                    for spec, track in zip(self.nodes, self.tracks, strict=True):
                        if self.su is None:
                            rec.final_versions[spec.name] = self._final_version(spec)
                        if track.process == "running":
                            track.process = "stopped"
                    self.view.refresh(self.tracks, self.addresses, self._header(time.time()))
                finally:
                    if self.work is not None:
                        shutil.rmtree(self.work, ignore_errors=True)
                    rec.ended = time.time()

    def _final_version(self, spec: NodeSpec) -> str:
        try:
            data = spec.target.read_bytes()
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "unreadable"
        return self.digests.get(blake3.blake3(data).hexdigest(), "unknown")
