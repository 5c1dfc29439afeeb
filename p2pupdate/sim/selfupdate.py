"""Self-update scenarios: releases of p2pupdate itself, one managed install, its nodes.

A scenario with a ``[self_update]`` table (``p2pupdate.sim.scenario.SelfUpdate``)
runs its nodes from one managed install instead of ``python -m p2pupdate``,
and its publications are releases of p2pupdate itself, published on the
platform channel (``p2pupdate/<track>/<python>-<platform>``). The harness
(``p2pupdate.sim.harness``) calls :class:`SelfUpdateRun` at a few points:

1. :meth:`SelfUpdateRun.prepare`: build a wheelhouse release of the running
   p2pupdate for the initial version and each publication (a ``bad_release``
   one with a defect: it crashes when ``node`` starts, or cannot even be
   imported), through ``p2pupdate release build``; then
   ``p2pupdate self install`` of the initial one into ``WORK/install``. The
   source of a release is the running package itself plus a ``pyproject.toml``
   written from its installed metadata, so this works from a plain
   ``pip install`` as well as from a checkout. Dependency wheels come from the
   package registry once (``pip wheel``); every release build after that is
   offline. With ``P2PUPDATE_SIM_RELEASE_CACHE=DIR`` the wheels and releases
   are kept in DIR and reused (keyed by the package's content); otherwise they
   live in the work dir and go with it. A failed build is a UsageError (one
   line; ``p2pupdate sim`` exits 2).
2. node command lines (the install's stable launcher), their environment
   (without the harness's ``PYTHONPATH``, so a node imports its release) and
   config keys (``confirm_window``, ``boot_attempts``, ``self_update_wait``);
3. as a supervisor (systemd ``Restart=always``): :meth:`SelfUpdateRun.on_exit`
   says when to start a node again that exited (code 3 after a rollback it
   could not exec, a crash of a bad release, ...), at most ``max_restarts``
   times;
4. :meth:`SelfUpdateRun.settled` (every node confirmed the last release; or,
   for a bad one: quarantined, ``current`` back, every node running the good
   release, then a quiet period in which nobody boots the bad one again);
5. :meth:`SelfUpdateRun.snapshot`: the install's state at the end (current,
   previous, quarantined, each node's boots per release from the install's
   history, its exit codes and pids, the release it runs) for the report.

:func:`check_self_update` and :func:`summary` are pure functions of that
snapshot and the nodes' events (used by ``p2pupdate.sim.report``). Nothing
here edits the install's files; it reads the contract files documented in
docs/self-update.md (``current``, ``previous``, ``state/quarantine.json``,
``state/nodes/*.json``, ``state/history.log``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import p2pupdate
from p2pupdate.errors import StateFileError, UsageError
from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate.release import platform_id
from p2pupdate.sim.procs import Supervisor
from p2pupdate.sim.scenario import Scenario, SelfUpdate
from p2pupdate.sim.tracker import NodeTrack

__all__ = [
    "CACHE_ENV",
    "SelfUpdateRun",
    "check_self_update",
    "release_source",
    "summary",
]

CACHE_ENV = "P2PUPDATE_SIM_RELEASE_CACHE"
_RESTART_DELAY = 0.3  # seconds, like RestartSec
_BUILD_TIMEOUT = 900.0  # a pip run that takes longer than this is stuck
_REGISTER_TIMEOUT = 60.0  # seconds from listening to registered in the install
_QUIET = 3.0  # seconds after a bad release settled in which nobody may boot it again
_BOOT_RE = re.compile(r"([0-9.]+) boot (\S+) node=(\w+) ")
_VERSION_RE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)
# The defects a bad release is built with (its code; the rest of the package is intact).
_DEFECTS = {
    "crash": (
        '\nimport sys as _sys\n\nif _sys.argv[1:2] == ["node"]:\n'
        '    raise SystemExit("p2pupdate sim: a bad release (crashes on start)")\n'
    ),
    "noimport": '\nraise ImportError("p2pupdate sim: a bad release (cannot be imported)")\n',
}


def _package_dir() -> Path:
    return Path(p2pupdate.__file__).resolve().parent


def _content_hash() -> str:
    """A short hash of the running package's files and metadata (the cache key)."""
    h = hashlib.sha256()
    root = _package_dir()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix == ".pyc":
            continue
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(_pyproject("0.0.0").encode())
    return h.hexdigest()[:12]


def _metadata() -> tuple[list[str], dict[str, str], str]:
    """(dependencies, console scripts, requires-python) of the installed p2pupdate."""
    try:
        dist = importlib.metadata.distribution("p2pupdate")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            "cannot build a release of p2pupdate: it is not installed (no package metadata); "
            "pip install it (or pip install -e .) first"
        ) from None
    deps = [r for r in (dist.requires or []) if "extra" not in r.partition(";")[2]]
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    return deps, scripts, dist.metadata["Requires-Python"] or ">=3.11"


def _pyproject(version: str) -> str:
    deps, scripts, python = _metadata()
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "p2pupdate"',
        f"version = {json.dumps(version)}",
        f"requires-python = {json.dumps(python)}",
        f"dependencies = {json.dumps(deps)}",
        "",
        "[project.scripts]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(scripts.items())),
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["p2pupdate"]',
        "",
    ]
    return "\n".join(lines)


def release_source(dest: Path, version: str, defect: str = "") -> Path:
    """A buildable source tree of the running p2pupdate at ``version`` in the new dir ``dest``.

    ``defect`` ("crash", "noimport") makes it a bad release. Raises UsageError
    when the package metadata or its ``__version__`` line cannot be found.
    """
    pkg = dest / "p2pupdate"
    shutil.copytree(_package_dir(), pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = pkg / "__init__.py"
    text, n = _VERSION_RE.subn(f'__version__ = "{version}"', init.read_text())
    if n != 1:
        raise UsageError(f"cannot build a release: no __version__ line in {init}")
    init.write_text(text + _DEFECTS.get(defect, ""))
    (dest / "pyproject.toml").write_text(_pyproject(version))
    return dest


def _env_without_harness(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node run from the install: it must import its own release."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NOTIFY_SOCKET", "WATCHDOG_USEC")
    return {k: v for k, v in env.items() if k not in drop and not k.startswith("P2PUPDATE_")}


@dataclass
class _Node:
    key: str
    pids: list[int] = field(default_factory=list)
    exits: list[int | None] = field(default_factory=list)


class SelfUpdateRun:
    """The self-update side of one harness run (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        work: Path,
        sup: Supervisor,
        env: Mapping[str, str],
        log_dir: Path,
        check_stop: Callable[[], None],
    ) -> None:
        assert scenario.self_update is not None
        self.sc = scenario
        self.spec: SelfUpdate = scenario.self_update
        self.work = work
        self.sup = sup
        self.env = dict(env)
        self.log_dir = log_dir
        self.check_stop = check_stop
        self.layout = inst.Layout(work / "install")
        self.nodes: dict[int, _Node] = {}
        self.archives: dict[str, Path] = {}
        self._settled_at: float | None = None
        self.quiet_from: float | None = None

    # -- building and installing ------------------------------------------------------
    async def _tool(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Run one build step as a supervised child; UsageError with its last line on failure."""
        log = self.log_dir / f"{name}.log"
        child = self.sup.spawn(name, argv, log_path=log, env=env, cwd=self.work)
        deadline = time.monotonic() + _BUILD_TIMEOUT
        while child.alive():
            self.check_stop()
            if time.monotonic() > deadline:
                self.sup.stop(child)
                raise UsageError(f"cannot build a release of p2pupdate: {name} got stuck")
            await trio.sleep(0.1)
        self.sup.reap()
        if child.returncode != 0:
            try:
                lines = log.read_text(errors="replace").strip().splitlines()
            except OSError:
                lines = []
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
            raise UsageError(
                f"cannot build a release of p2pupdate ({name} exited with {child.returncode}; "
                f"the package registry must be reachable the first time): {last[:300]} "
                f"(log: {log})"
            )

    def _cache(self) -> Path:
        configured = os.environ.get(CACHE_ENV)
        root = Path(configured) if configured else self.work / "releases"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{CACHE_ENV}={root}: cannot create it: {exc.strerror}") from None
        return root

    async def _deps(self, cache: Path, isolated: bool) -> Path:
        deps, _, _ = _metadata()
        tag = "-".join(platform_id())
        key = hashlib.sha256(json.dumps([deps, isolated, tag]).encode()).hexdigest()[:12]
        out = cache / f"wheels-{key}"
        if out.is_dir():
            return out
        tmp = cache / f".wheels-{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
        argv += ["--prefer-binary", "-w", str(tmp), *deps, "pip"]
        if isolated:
            argv.append("hatchling")  # the build backend, for offline isolated builds
        await self._tool("pip-wheel-dependencies", argv, self.env)
        try:
            tmp.rename(out)
        except OSError:  # another run made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    async def _release(self, cache: Path, deps: Path, version: str, defect: str) -> Path:
        isolated = importlib.util.find_spec("hatchling") is None
        out = cache / f"p2pupdate-{version}{'-' + defect if defect else ''}-{_content_hash()}.tar"
        if out.is_file():
            return out
        src = self.work / "src" / f"{version}{defect}"
        src.parent.mkdir(exist_ok=True)
        shutil.rmtree(src, ignore_errors=True)
        release_source(src, version, defect)
        argv = [sys.executable, "-m", "p2pupdate", "release", "build", "--out", str(out)]
        argv += ["--source", str(src), "--find-links", str(deps), "--no-index"]
        argv += ["--track", self.spec.track]
        if not isolated:
            argv.append("--no-build-isolation")
        await self._tool(f"release-build-{version}{defect}", argv, self.env)
        shutil.rmtree(src, ignore_errors=True)
        return out

    async def prepare(self) -> dict[str, Path]:
        """Build every release and set up the managed install; version -> release archive."""
        isolated = importlib.util.find_spec("hatchling") is None
        cache = self._cache()
        deps = await self._deps(cache, isolated)
        versions = [(self.sc.initial_version, True)]
        versions += [(p.version, p.healthy) for p in self.sc.publications]
        for version, healthy in versions:
            self.check_stop()
            defect = "" if healthy else self.spec.defect
            self.archives[version] = await self._release(cache, deps, version, defect)
        argv = [sys.executable, "-m", "p2pupdate", "self", "install"]
        argv += ["--install-dir", str(self.layout.root)]
        argv += ["--wheelhouse", str(self.archives[self.sc.initial_version])]
        await self._tool("self-install", argv, self.env)
        return self.archives

    # -- the nodes --------------------------------------------------------------------
    def node_argv(self, *args: str) -> list[str]:
        """Run ``p2pupdate ARGS`` through the install's stable launcher."""
        return [str(self.layout.launcher), *args]

    def node_env(self) -> dict[str, str]:
        return _env_without_harness(self.env)

    def config_lines(self) -> list[str]:
        s = self.spec
        return [
            f"self_update_track = {json.dumps(s.track)}",
            f"boot_attempts = {s.boot_attempts}",
            f"confirm_window = {s.confirm_window!r}",
            f"self_update_wait = {s.wait_for_others!r}",
        ]

    def add_node(self, index: int, data_dir: Path) -> None:
        self.nodes[index] = _Node(inst.node_key(data_dir))

    def on_start(self, index: int, pid: int) -> None:
        self.nodes[index].pids.append(pid)

    def on_exit(self, index: int, code: int | None) -> float | None:
        """A node exited: seconds until the supervisor starts it again (None: gives up)."""
        node = self.nodes[index]
        node.exits.append(code)
        if len(node.exits) > self.spec.max_restarts:
            return None
        return _RESTART_DELAY

    async def wait_registered(self, indices: Sequence[int]) -> None:
        """Until every node runs the initial release with self-update on (registered)."""
        timeout = _REGISTER_TIMEOUT
        deadline = time.monotonic() + timeout
        while True:
            regs = self._registrations()
            missing = [
                i
                for i in indices
                if regs.get(self.nodes[i].key, {}).get("release") != self.sc.initial_version
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise UsageError(
                    f"nodes {', '.join(f'n{i:02d}' for i in missing)} run from the managed "
                    f"install but did not turn self-update on within {timeout:g}s (see logs/)"
                )
            self.check_stop()
            await trio.sleep(0.2)

    def feed(self, track: NodeTrack, ev: Mapping[str, Any]) -> None:
        """Show self-update progress in the live view (the tracker knows app updates only)."""
        name = str(ev.get("event"))
        if name.startswith("self_update_"):
            track.state = name.removeprefix("self_update_").replace("_", " ")
            version = ev.get("version")
            if name == "self_update_confirmed" and isinstance(version, str):
                track.version = version
            if name == "self_update_rolled_back":
                restored = ev.get("restored_version")
                track.version = restored if isinstance(restored, str) else track.version

    # -- reading the install ------------------------------------------------------------
    def _registrations(self) -> dict[str, dict[str, Any]]:
        return inst.registered_nodes(self.layout)

    def _link(self, link: Path) -> str | None:
        try:
            return inst.read_link(link)
        except StateFileError:
            return None

    def _boots(self) -> list[tuple[float, str, str]]:
        try:
            text = self.layout.history.read_text(errors="replace")
        except OSError:
            return []
        return [
            (float(m.group(1)), m.group(2), m.group(3))
            for m in map(_BOOT_RE.match, text.splitlines())
            if m
        ]

    def settled(self, tracks: Sequence[NodeTrack], pids: Mapping[int, int | None]) -> bool:
        """Every node settled on the last release (see the module docstring)."""
        final = self.sc.final_publication
        good = self.sc.last_good_version
        regs = self._registrations()
        for index, node in self.nodes.items():
            reg = regs.get(node.key)
            if reg is None or reg.get("pid") != pids.get(index) or reg.get("release") != good:
                return self._unsettle()
            events = tracks[index].events
            if final.healthy:
                if not _has(events, "self_update_confirmed", final.version):
                    return self._unsettle()
            else:
                restarting = [e for e in events if e.get("event") == "self_update_restarting"]
                at = reg.get("at")
                if restarting and not (isinstance(at, (int, float)) and at > restarting[-1]["t"]):
                    return self._unsettle()  # re-exec'd since? (the installing node waits)
        if final.healthy:
            return self._link(self.layout.current) == final.version
        if (
            final.version not in inst.quarantined(self.layout)
            or self._link(self.layout.current) != good
        ):
            return self._unsettle()
        # Then a quiet period: a node that would retry the bad release shows it here.
        now = time.time()
        if self._settled_at is None:
            self._settled_at = self.quiet_from = now
        return now - self._settled_at >= max(_QUIET, 2 * self.sc.check_interval)

    def _unsettle(self) -> bool:
        self._settled_at = None
        return False

    def running_release(self, index: int, pid: int | None) -> str:
        reg = self._registrations().get(self.nodes[index].key)
        if reg is None or pid is None or reg.get("pid") != pid:
            return "unknown"
        return str(reg.get("release"))

    def snapshot(self, names: Sequence[str], pids: Mapping[int, int | None]) -> dict[str, Any]:
        """The install's state and each node's boots, exits and release, JSON-ready."""
        boots = self._boots()
        nodes: dict[str, Any] = {}
        for index, node in sorted(self.nodes.items()):
            per: dict[str, int] = {}
            for _, release, key in boots:
                if key == node.key:
                    per[release] = per.get(release, 0) + 1
            nodes[names[index]] = {
                "key": node.key,
                "pids": node.pids,
                "exits": node.exits,
                "boots": per,
                "running": self.running_release(index, pids.get(index)),
            }
        bad = {p.version for p in self.sc.publications if not p.healthy}
        return {
            "install_dir": str(self.layout.root),
            "channel": self.sc.channel,
            "boot_attempts": self.spec.boot_attempts,
            "defect": self.spec.defect,
            "releases": {v: p.stat().st_size for v, p in self.archives.items() if p.exists()},
            "current": self._link(self.layout.current),
            "previous": self._link(self.layout.previous),
            "quarantined": inst.quarantined(self.layout),
            "complete": sorted(
                p.name.removesuffix(".complete")
                for p in self.layout.releases.glob("*.complete")
                if inst.is_complete(self.layout, p.name.removesuffix(".complete"))
            ),
            "quiet_from": self.quiet_from,
            "boots_after_quiet": [
                {"t": t, "release": r, "key": k}
                for t, r, k in boots
                if self.quiet_from is not None and t >= self.quiet_from and r in bad
            ],
            "nodes": nodes,
        }


def _has(events: Sequence[Mapping[str, Any]], name: str, version: str, **kw: Any) -> bool:
    return any(
        e.get("event") == name
        and e.get("version") == version
        and all(e.get(k) == v for k, v in kw.items())
        for e in events
    )


# -- expectations and summary (pure) ---------------------------------------------------


def _exp(name: str, expected: object, ok: bool, problems: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "expected": expected,
        "actual": ok,
        "ok": ok == expected,
        "detail": "; ".join(problems),
    }


def check_self_update(
    sc: Scenario, snap: Mapping[str, Any] | None, tracks: Sequence[NodeTrack]
) -> list[dict[str, Any]]:
    """The ``self_updated`` and ``self_update_rolled_back`` verdicts of a finished run."""
    exp = sc.expect
    out: list[dict[str, Any]] = []
    nodes: Mapping[str, Any] = (snap or {}).get("nodes", {})
    if exp.self_updated is not None:
        v = sc.final_publication.version
        problems = [] if snap else ["no self-update state recorded"]
        if snap and snap.get("current") != v:
            problems.append(f"current -> {snap.get('current')}")
        for tr in tracks:
            n = nodes.get(tr.name, {})
            why = []
            if n.get("running") != v:
                why.append(f"runs {n.get('running')}")
            if n.get("exits"):
                why.append(f"exited {n.get('exits')} (not a re-exec)")
            if not _has(tr.events, "self_update_restarting", v):
                why.append("no self_update_restarting")
            if not _has(tr.events, "self_update_confirmed", v):
                why.append("no self_update_confirmed")
            if why:
                problems.append(f"{tr.name}: {', '.join(why)}")
        installers = [t.name for t in tracks if _has(t.events, "self_update_installed", v,
                                                     switched=True)]  # fmt: skip
        if len(installers) != 1:
            problems.append(f"nodes that switched current: {installers} (expected exactly one)")
        out.append(_exp("self_updated", exp.self_updated, not problems, problems))
    if exp.self_update_rolled_back is not None:
        good = sc.last_good_version
        bound = sc.self_update.boot_attempts if sc.self_update else 0
        bad = [p.version for p in sc.publications if not p.healthy]
        problems = [] if snap and bad else ["no bad release or no self-update state recorded"]
        if snap:
            if snap.get("current") != good:
                problems.append(f"current -> {snap.get('current')}, not {good}")
            for v in bad:
                if v not in snap.get("quarantined", []):
                    problems.append(f"{v} not quarantined")
                tried = [name for name, n in nodes.items() if n.get("boots", {}).get(v)]
                if not tried:
                    problems.append(f"no node booted {v}")
                over = [
                    f"{name} {n['boots'][v]}x"
                    for name, n in nodes.items()
                    if n.get("boots", {}).get(v, 0) > bound
                ]
                if over:
                    problems.append(f"booted {v} more than {bound} times: {', '.join(over)}")
                problems += _rolled_back_problems(v, good, nodes, tracks)
            if snap.get("quiet_from") is None:
                problems.append("never settled")
            if snap.get("boots_after_quiet"):
                problems.append(f"retried after settling: {snap['boots_after_quiet']}")
            wrong = sorted(n for n, x in nodes.items() if x.get("running") != good)
            if wrong:
                problems.append(f"not running {good}: {', '.join(wrong)}")
            problems += _fallback_problems(sc, snap)
        out.append(
            _exp("self_update_rolled_back", exp.self_update_rolled_back, not problems, problems)
        )
    return out


def _rolled_back_problems(
    v: str, good: str, nodes: Mapping[str, Any], tracks: Sequence[NodeTrack]
) -> list[str]:
    """The installing node never ran the bad release ``v`` (unless it was alone), and every
    node that booted it reported being rolled back to ``good``."""
    problems = []
    reported = {
        t.name
        for t in tracks
        if _has(t.events, "self_update_rolled_back", v, restored_version=good)
    }
    if not reported:
        problems.append(f"no node reported self_update_rolled_back of {v}")
    silent = sorted(n for n, x in nodes.items() if x.get("boots", {}).get(v) and n not in reported)
    if silent:
        problems.append(f"booted {v}, rolled back, did not say so: {', '.join(silent)}")
    installers = [
        t.name for t in tracks if _has(t.events, "self_update_installed", v, switched=True)
    ]
    for name in installers:
        if len(nodes) > 1 and nodes.get(name, {}).get("boots", {}).get(v):
            problems.append(f"the installing node {name} booted {v} (it must go last)")
    return problems


def _fallback_problems(sc: Scenario, snap: Mapping[str, Any]) -> list[str]:
    """A good release other than ``current`` is left to fall back to, when the install
    ever had one (the initial release and each healthy publication)."""
    good = {sc.initial_version} | {p.version for p in sc.publications if p.healthy}
    current = snap.get("current")
    complete = set(snap.get("complete", []))
    quarantined = set(snap.get("quarantined", []))
    if len(good) < 2:
        return []
    left = sorted((complete - quarantined) - {current})
    if not left:
        return [f"no good release other than {current} left (releases: {sorted(complete)})"]
    if snap.get("previous") not in left:
        return [f"previous -> {snap.get('previous')}, not a good release other than {current}"]
    return []


def summary(snap: Mapping[str, Any]) -> list[str]:
    """Lines for the end-of-run summary."""
    lines = [
        f"  self-update: current {snap.get('current')}, previous {snap.get('previous')}, "
        f"quarantined {', '.join(snap.get('quarantined', [])) or 'none'}"
    ]
    for name, n in snap.get("nodes", {}).items():
        boots = ", ".join(f"{v} x{c}" for v, c in sorted(n.get("boots", {}).items()))
        exits = f", exits {n['exits']}" if n.get("exits") else ""
        lines.append(f"    {name}: runs {n.get('running')}; boots {boots or '-'}{exits}")
    return lines
