"""Driving a run: publishing, kill -9 and restarts, late joiners, reaping children."""

from __future__ import annotations

import re
import time

from p2pupdate.sim.preparing import Preparation
from p2pupdate.sim.procs import Child
from p2pupdate.sim.records import PublishRecord
from p2pupdate.sim.scenario import (
    BadReleaseFault,
    Kill9Fault,
    LateJoinFault,
    PublisherKillFault,
)
from p2pupdate.sim.topology import authority_targets
from p2pupdate.sim.tracker import NodeTrack
from p2pupdate.sim.workdir import NodeSpec, last_line

__all__ = ["Driver"]

_UPLOADED_RE = re.compile(r"uploaded (\d+) bytes")


class Driver(Preparation):
    """Publications and faults as the scenario times them; children that exit."""

    def _publish(self, index: int) -> None:
        sc = self.sc
        pub = sc.publications[index]
        runs = sum(r.version == pub.version for r in self.publishes)
        name = f"publish-{pub.version}" + (f"-{runs + 1}" if runs else "")
        assert self.key_path is not None
        targets = authority_targets(sc.topology, sc.nodes, sc.authority_peers, sc.late_nodes)
        star = sc.topology == "star"
        argv = self._cmd(
            "publish",
            "--key", str(self.key_path),
            "--channel", sc.channel,
            "--version", pub.version,
            "--file", str(self.packages[pub.version]),
            "--replicas", str(min(sc.replicas, len(targets) if star else sc.nodes)),
            "--timeout", str(sc.timeout),
            "--listen", f"{self.authority_host}:{self.authority_port}",
        )  # fmt: skip
        for j in targets:
            argv += ["--peer", self.nodes[j].address]
        if pub.stages:
            argv += ["--stages", pub.stages]
        if pub.abort_after:
            argv += ["--abort-after", pub.abort_after]
        if sc.upload_limit and sc.network == "loopback":
            argv += ["--upload-limit", str(sc.upload_limit)]
        if self.fleet_key is not None:
            argv += ["--fleet-key", str(self.fleet_key)]
        if self.net is not None:
            argv = self.net.wrap(0, argv)
        record = PublishRecord(
            pub.version, pub.healthy, time.time(),
            address=f"{self.authority_host}:{self.authority_port}",
        )  # fmt: skip
        child = self.sup.spawn(
            name,
            argv,
            log_path=self.out / "logs" / f"{name}.log",
            stdout_path=self.out / "logs" / f"{name}.out",
            env=self._env,
            cwd=self.work,
        )
        record.log_name = name
        self.publishes.append(record)
        self.pub_children.append((record, child))
        for fault, rec in self.faults:
            if isinstance(fault, BadReleaseFault) and fault.version == pub.version:
                rec.fired, rec.fired_at = True, record.started
                rec.detail = f"{pub.version} fails its health check"
                if self.su is not None:
                    rec.detail = f"{pub.version} is a bad release ({self.su.spec.defect})"
        self.rec.publishes = self.publishes
        peers = ", ".join(self.nodes[j].name for j in targets)
        again = " again (the same command)" if runs else ""
        self.view.note(
            f"publishing {pub.version}{again}{'' if pub.healthy else ' (bad release)'} to {peers}"
        )

    def _publish_done(self, record: PublishRecord, child: Child) -> None:
        record.ended = time.time()
        record.exit_code = child.returncode
        if child.stdout_path is not None and child.stdout_path.exists():
            record.stdout = child.stdout_path.read_text(errors="replace").strip()
            m = _UPLOADED_RE.search(record.stdout)
            if m:
                record.bytes_uploaded = int(m.group(1))
        if record.exit_code == 0:
            self.view.note(f"publish {record.version} done: {record.stdout}")
        elif record.killed:
            self.view.note(f"publish {record.version} was killed (kill -9)")
        else:
            log = self.out / "logs" / f"{record.log_name}.log"
            self.view.note(
                f"publish {record.version} exited with {record.exit_code}: {last_line(log)}"
            )

    def _maybe_kill_publisher(self) -> None:
        """kill_publisher: SIGKILL a running publish once the furthest node is far enough."""
        furthest = max((t.progress for t in self.tracks), default=0.0)
        for fault, rec in self.faults:
            if not isinstance(fault, PublisherKillFault) or rec.fired:
                continue
            if not furthest >= fault.at_progress or furthest >= 1.0:
                continue
            running = [
                (r, c) for r, c in self.pub_children if r.version == fault.version and c.alive()
            ]
            if not running:
                continue
            record, child = running[-1]
            self.sup.kill9(child)
            record.killed = True
            self._publish_done(record, child)  # reaped by kill9: noted now, not at the end
            rec.fired, rec.fired_at, rec.progress_at_kill = True, time.time(), furthest
            rec.detail = f"publish {fault.version} killed at {100 * furthest:.0f}% (furthest node)"
            index = next(
                i for i, p in enumerate(self.sc.publications) if p.version == fault.version
            )
            self.republish_due[index] = time.time() + fault.restart_after
            self.view.note(
                f"kill -9 publish {fault.version} with the furthest node at "
                f"{100 * furthest:.0f}%; the same publish again in {fault.restart_after:g}s"
            )

    def _publisher_restarted(self, index: int) -> None:
        version = self.sc.publications[index].version
        for fault, rec in self.faults:
            if isinstance(fault, PublisherKillFault) and fault.version == version:
                rec.restarted_at = time.time()
                rec.detail += "; published again"

    def _maybe_kill(self, spec: NodeSpec, track: NodeTrack) -> None:
        for fault, rec in self.faults:
            if (
                isinstance(fault, Kill9Fault)
                and fault.node == spec.index
                and not rec.fired
                and track.progress >= fault.at_progress
                and track.progress < 1.0
            ):
                child = self.children.get(spec.index)
                if child is None or not child.alive():
                    return
                self.sup.kill9(child)
                self.killed.add(spec.index)
                rec.fired, rec.fired_at, rec.progress_at_kill = True, time.time(), track.progress
                rec.detail = f"killed at {100 * track.progress:.0f}%"
                track.process = "killed"
                self.restart_due[spec.index] = time.time() + fault.restart_after
                self.view.note(
                    f"kill -9 {spec.name} at {100 * track.progress:.0f}%; "
                    f"restart in {fault.restart_after:g}s"
                )

    def _restart(self, index: int) -> None:
        spec = self.nodes[index]
        track = self.tracks[index]
        self.killed.discard(index)
        self._start_node(spec)
        track.restarts += 1
        for fault, rec in self.faults:
            if isinstance(fault, Kill9Fault) and fault.node == index:
                rec.restarted_at = time.time()
                rec.detail += "; restarted"
        self.view.note(f"restarted {spec.name}")

    def _late_joins(self, now: float, published: int) -> None:
        if not self.publishes:
            return
        first_pub = self.publishes[0].started
        for fault, rec in self.faults:
            if not isinstance(fault, LateJoinFault) or rec.fired:
                continue
            if fault.at is not None:
                due = now >= first_pub + fault.at
            else:
                final = self.sc.final_publication.version
                others = [
                    t
                    for t in self.tracks
                    if t.index not in self.sc.late_nodes or t.started_at is not None
                ]
                due = published == len(self.sc.publications) and all(
                    t.settled(final) for t in others
                )
            if due:
                spec = self.nodes[fault.node]
                self._start_node(spec)
                rec.fired, rec.fired_at = True, now
                rec.detail = f"joined {now - first_pub:.1f}s after the first publication"
                self.view.note(f"late joiner {spec.name} starts")

    def _reap(self) -> None:
        for child in self.sup.reap():
            for record, pchild in self.pub_children:
                if pchild is child:
                    self._publish_done(record, child)
            for index, nchild in self.children.items():
                if nchild is child and index not in self.killed:
                    track = self.tracks[index]
                    track.process = "exited"
                    track.exit_code = child.returncode
                    self.view.note(
                        f"{track.name} exited unexpectedly with code {child.returncode}: "
                        f"{last_line(self.nodes[index].log)}"
                    )
                    delay = self.su.on_exit(index, child.returncode) if self.su else None
                    if delay is not None:  # a supervisor (Restart=always) starts it again
                        self.restart_due[index] = time.time() + delay
                    elif self.su is not None:
                        self.view.note(f"{track.name}: too many restarts, not started again")
