"""Swarm download on loopback: 10 ``p2pupdate node`` processes + ``p2pupdate publish``.

Prints one table, every figure measured in this run:

- p2pupdate, unlimited and with every upload (nodes and publisher) limited to ``--limit``:
  time from the first ``announcement_received`` until every node's ``download_complete``
  (read from the nodes' ``--events`` files), that time over the Kumar-Ross bound
  max(F/u_s, N*F/(u_s + sum u_i)) when limited, aggregate goodput N*F/time, the
  publisher's upload ratio (bytes it printed / package size), the largest peak RSS of a
  node (VmHWM from /proc, read just before the nodes are stopped);
- the centralized baseline: the same nodes, each allowed a single connection
  (``max_connections = 1`` in its config), so each fetches only from the publisher and
  PEX cannot make them trade;
- libtorrent 2.x (the PyPI wheel, benchmark-only) on the same package, node count and
  limits, 64 KiB pieces, 127.0.0.0/8 in the global peer class (see ``_lt_peer.py``); the
  column is skipped with a note when ``import libtorrent`` fails;
- TLS: the p2pupdate runs again with ``--encrypt`` on every node and on publish (TLS 1.3
  on every connection), for the ratio encrypted / plain;
- kill -9 restart: the upload-limited swarm again, one node is killed with SIGKILL when its
  progress passes 50% and restarted from its data dir at once; refetched chunks = chunks
  it fetched after the restart (its ``download_complete`` sources) minus chunks its partial
  file did not hold intact when it died (compared with the package bytes).

Heterogeneous fleets (issue 22): ``--slow K --slow-rate R`` makes the last K nodes upload
at R (only the limited runs are made; libtorrent gets the same per-peer limits), and
``--bootstrap B`` gives each node B others with ``--peer`` instead of all. The bound is then
max(F/u_s, N*F/(u_s + sum u_i)); each node's completion time, their spread and the chunks
each node got from the seed (its ``download_complete`` sources) are printed under the table:

    .venv/bin/python benchmarks/bench_swarm.py --size 40MiB --limit 4MiB/s \
        --slow 2 --slow-rate 0.4MiB/s --bootstrap 3 --only swarm,libtorrent

End to end (issue 16): ``--e2e`` gives every node a file target for the channel with a
trivial health check (``true``), waits for every node's ``update_complete`` and prints, under
the table, the time from the start of the ``publish`` process to the last install (over the
bound when limited) beside the transfer-only time, with its split (first announcement, first
download start, last download complete, last install):

    .venv/bin/python benchmarks/bench_swarm.py --size 40MiB --limit 4MiB/s --bootstrap 3 \
        --only swarm,libtorrent --e2e

Every process listens on 127.0.0.1, every wait is bounded, every child is killed on
exit (and by the kernel if this script dies: PR_SET_PDEATHSIG). Files go to /dev/shm
when it exists. Quick run (< 1 minute):

    .venv/bin/python benchmarks/bench_swarm.py --size 8MiB

Full run (targets in docs/performance.md):

    .venv/bin/python benchmarks/bench_swarm.py
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from p2pupdate.core.units import format_size, parse_rate, parse_size

__all__: list[str] = []

CHUNK = 64 * 1024
CHANNEL = "bench/swarm"
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "p2pupdate"

# -- child processes ---------------------------------------------------------------------

_children: list[subprocess.Popen[bytes]] = []


def _pdeathsig() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


_HOOK = _pdeathsig()


def spawn(argv: list[str], *, stdout: Path, stdin: bool = False) -> subprocess.Popen[bytes]:
    with open(stdout, "wb") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_HOOK,
        )
    _children.append(p)
    return p


def stop(p: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    with contextlib.suppress(ValueError):
        _children.remove(p)


def kill_all() -> None:
    for p in list(_children):
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
    _children.clear()


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_listening(ports: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on port {port} after {timeout} s")
            time.sleep(0.05)


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a live process in bytes (0 if unknown)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (0 if unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reap(p: subprocess.Popen[bytes]) -> float | None:
    """Like ``p.poll()``, but collect the exited child with wait4: its CPU seconds, or None.

    A process that has exited has no /proc/PID/stat to read any more; its rusage says
    how much CPU it used (user + system, whole life)."""
    if p.returncode is not None:
        return None
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid == 0:
        return None
    p.returncode = os.waitstatus_to_exitcode(status)
    return float(ru.ru_utime + ru.ru_stime)


# A competing load: one core spun in a bounded loop (it ends by itself after ``seconds``,
# and is killed with everything else, and by the kernel if this script dies).
_BUSY = (
    "import time, sys\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass\n"
)


def start_busy(n: int, seconds: float, log: Path) -> list[subprocess.Popen[bytes]]:
    return [spawn([sys.executable, "-c", _BUSY, str(seconds)], stdout=log) for _ in range(n)]


def moved_bytes(labels: list[str], dones: list[list[dict[str, object]]], size: int) -> list[int]:
    """Bytes each node moved (received + served).

    Received: the package (every node downloads all of it). Served: the chunks the
    other nodes' ``download_complete`` sources credit to this node's address, at 64 KiB
    each (chunks that arrived as duplicates and were dropped are not counted)."""
    served: dict[str, int] = {}
    for d in dones:
        sources = d[-1].get("sources") if d else None
        if isinstance(sources, dict):
            for label, n in sources.items():
                served[str(label)] = served.get(str(label), 0) + int(n)
    return [size + served.get(label, 0) * CHUNK for label in labels]


def read_events(path: Path) -> list[dict[str, object]]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


# -- results -----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    seconds: float | None = None
    bound: float | None = None
    seed_ratio: float | None = None
    rss: int = 0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    per_node: list[float] = field(default_factory=list)  # completion time of each node
    from_seed: list[int] = field(default_factory=list)  # chunks each node got from the seed
    slow_nodes: list[int] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)  # CPU s per GiB moved, each node
    pub_cpu_per_gib: float | None = None  # the same for the publisher


@dataclass
class Setup:
    work: Path
    package: Path
    size: int
    nodes: int
    key: Path
    pubkey: str
    timeout: float
    slow: int = 0  # the last ``slow`` nodes upload at ``slow_rate`` (limited runs only)
    slow_rate: int = 0
    bootstrap: int = 0  # each node is given this many others with --peer (0 = all)
    e2e: bool = False  # each node installs the package into a file target (see e2e_*)

    def limits(self, limit: int) -> list[int]:
        if not limit:
            return [0] * self.nodes
        return node_limits(self.nodes, limit, self.slow, self.slow_rate)


def fresh_dir(work: Path, name: str) -> Path:
    """A new directory for one run (``name``, then ``name-2``... when runs repeat)."""
    base = name.replace(" ", "-")
    run, n = work / base, 1
    while run.exists():
        n += 1
        run = work / f"{base}-{n}"
    run.mkdir()
    return run


def kumar_ross(size: int, nodes: int, rate: int) -> float | None:
    if not rate:
        return None
    return max(size / rate, nodes * size / (rate + nodes * rate))


def kumar_ross_unequal(size: int, seed_rate: int, rates: list[int]) -> float | None:
    """max(F/u_s, N*F/(u_s + sum u_i)) for per-node uploads ``rates`` (None if unlimited)."""
    if not seed_rate or not all(rates):
        return None
    return max(size / seed_rate, len(rates) * size / (seed_rate + sum(rates)))


def node_limits(nodes: int, limit: int, slow: int, slow_rate: int) -> list[int]:
    """Upload limit of each node: ``limit``, except the last ``slow`` at ``slow_rate``."""
    return [slow_rate if i >= nodes - slow else limit for i in range(nodes)]


def bootstrap_peers(addrs: list[str], i: int, count: int) -> list[str]:
    """The addresses node ``i`` is given with --peer: all others, or the next ``count``."""
    others = [a for j, a in enumerate(addrs) if j != i]
    if not count or count >= len(others):
        return others
    return [addrs[(i + k) % len(addrs)] for k in range(1, count + 1)]


# -- p2pupdate ---------------------------------------------------------------------------


def run_p2pupdate(
    st: Setup,
    name: str,
    limit: int,
    *,
    central: bool = False,
    kill_at: float | None = None,
    encrypt: bool = False,
    busy: int = 0,
) -> Result:
    run = fresh_dir(st.work, name)
    ports = free_ports(st.nodes + 1)
    addrs = [f"127.0.0.1:{p}" for p in ports[1:]]
    procs: list[subprocess.Popen[bytes]] = []
    argvs: list[list[str]] = []
    events: list[Path] = []
    limits = st.limits(limit)
    for i, addr in enumerate(addrs):
        d = run / f"n{i:02d}"
        d.mkdir()
        ev = d / "events.jsonl"
        argv = [
            str(BIN), "node",
            "--data-dir", str(d / "data"),
            "--listen", addr,
            "--trust", st.pubkey,
            "--events", str(ev),
            "--log-level", "warning",
        ]  # fmt: skip
        if central:
            # One connection: the publisher's. PEX may tell a node about the others,
            # but it can neither dial them nor accept them.
            cfg = d / "node.toml"
            cfg.write_text("max_connections = 1\ntarget_connections = 1\n")
            argv += ["--config", str(cfg)]
        else:
            for other in bootstrap_peers(addrs, i, st.bootstrap):
                argv += ["--peer", other]
        if limits[i]:
            argv += ["--upload-limit", str(limits[i])]
        if encrypt:
            argv += ["--encrypt"]
        if st.e2e:
            argv += e2e_node_args(d)
        if i == 0 and os.environ.get("BENCH_PROFILE"):  # developer aid: cProfile node 0
            prof = str(d / "node.prof")
            argv[:1] = [sys.executable, "-m", "cProfile", "-o", prof, "-m", "p2pupdate"]
        if i == 0 and os.environ.get("BENCH_WRAP"):  # developer aid: run node 0 via a wrapper
            argv[:1] = [sys.executable, os.environ["BENCH_WRAP"]]
        argvs.append(argv)
        events.append(ev)
        procs.append(spawn(argv, stdout=d / "node.log"))
    res = Result(name, bound=kumar_ross_unequal(st.size, limit, limits))
    node_cpu: list[float] = []
    pub_cpu: float | None = None
    loads: list[subprocess.Popen[bytes]] = []
    try:
        if busy:
            loads = start_busy(busy, st.timeout + 60, run / "busy.log")
        wait_listening(ports[1:], 30)
        if not central:
            time.sleep(1.0)  # let the mesh form
        pub_argv = [
            str(BIN), "publish",
            "--key", str(st.key),
            "--channel", CHANNEL,
            "--version", "1.0.0",
            "--file", str(st.package),
            "--replicas", str(st.nodes),
            "--timeout", str(st.timeout),
            "--listen", f"127.0.0.1:{ports[0]}",
        ]  # fmt: skip
        for addr in addrs:
            pub_argv += ["--peer", addr]
        if limit:
            pub_argv += ["--upload-limit", str(limit)]
        if encrypt:
            pub_argv += ["--encrypt"]
        if os.environ.get("BENCH_WRAP_PUBLISH"):  # developer aid: run publish via a wrapper
            pub_argv[:1] = [sys.executable, os.environ["BENCH_WRAP_PUBLISH"]]
        pub_out = run / "publish.out"
        # CPU so far (start-up, mesh forming): left out of the CPU per GiB moved.
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        t_publish = time.time()
        pub = spawn(pub_argv, stdout=pub_out)
        deadline = time.monotonic() + st.timeout + 30
        victim = st.nodes // 2
        killed_missing: int | None = None
        pub_cpu_start: float | None = None  # the publisher's CPU when node 0 heard of it
        # Every node's CPU once the last one has completed (the transfer is over): what
        # the nodes do after it (reports, waiting for publish to exit) is left out.
        completed: set[int] = set()
        cpu_at_end: list[float] | None = None
        while (pub_cpu := reap(pub)) is None and pub.returncode is None:
            if pub_cpu_start is None and any(
                e.get("event") == "announcement_received" for e in read_events(events[0])
            ):
                pub_cpu_start = cpu_seconds(pub.pid)
            if cpu_at_end is None and kill_at is None:
                completed |= {
                    i
                    for i, ev in enumerate(events)
                    if i not in completed
                    and any(e.get("event") == "download_complete" for e in read_events(ev))
                }
                if len(completed) == len(events):
                    cpu_at_end = [cpu_seconds(p.pid) for p in procs]
            if killed_missing is not None and all(
                any(e.get("event") == "download_complete" for e in read_events(ev)) for ev in events
            ):
                # The restarted node need not be redialled by the publisher to count.
                res.note = "publish stopped once all completed"
                break
            if time.monotonic() > deadline:
                res.note = "publish did not exit"
                break
            if kill_at is not None and killed_missing is None:
                prog = [
                    float(e.get("progress", 0))  # type: ignore[arg-type]
                    for e in read_events(events[victim])
                    if e.get("event") == "download_progress"
                ]
                if prog and prog[-1] >= kill_at:
                    procs[victim].kill()
                    procs[victim].wait(5)
                    killed_missing = missing_chunks(run / f"n{victim:02d}" / "data", st)
                    res.extra["killed_at"] = prog[-1]
                    res.extra["missing"] = killed_missing
                    procs[victim] = spawn(argvs[victim], stdout=run / "restart.log")
            time.sleep(0.02 if kill_at is not None else 0.1)
        if st.e2e and kill_at is None:
            e2e_wait_installed(events, deadline)
        # Peak RSS before anything is stopped.
        res.rss = max(vm_hwm(p.pid) for p in procs)
        # CPU the nodes spent (start-up included): what encryption costs, whatever the load.
        node_cpu = [cpu_seconds(p.pid) for p in procs]
        res.extra["cpu"] = sum(node_cpu)
        node_cpu = [c - b for c, b in zip(cpu_at_end or node_cpu, cpu_before, strict=True)]
        if pub_cpu is None and pub.returncode is None:
            pub_cpu = cpu_seconds(pub.pid)
        if pub_cpu is not None:
            pub_cpu -= pub_cpu_start or 0.0  # start-up and hashing the package left out
        stop(pub)
        out = pub_out.read_text()
        m = re.search(r"uploaded (\d+) bytes", out)
        if m:
            res.seed_ratio = int(m.group(1)) / st.size
        elif not res.note:
            res.note = "publish: " + (out.strip().splitlines() or ["no output"])[-1][:60]
    finally:
        for p in loads:
            p.kill()
            stop(p)
        t_stop = time.monotonic()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            stop(p)
        if os.environ.get("BENCH_DEBUG"):
            print(f"    stopping nodes took {time.monotonic() - t_stop:.1f} s", flush=True)
    evs = [read_events(e) for e in events]
    starts = [
        float(e["t"])  # type: ignore[arg-type]
        for ev in evs
        for e in ev
        if e.get("event") == "announcement_received"
    ]
    dones = [
        [e for e in ev if e.get("event") == "download_complete" and e.get("channel") == CHANNEL]
        for ev in evs
    ]
    if starts and all(dones):
        t0 = min(starts)
        ends = [float(d[-1]["t"]) - t0 for d in dones]  # type: ignore[arg-type]
        res.seconds = max(ends)
        res.per_node = ends
        pub_label = f"127.0.0.1:{ports[0]}"
        for d in dones:
            sources = d[-1].get("sources")
            got = sources.get(pub_label, 0) if isinstance(sources, dict) else 0
            res.from_seed.append(int(got))
        res.slow_nodes = list(range(st.nodes - st.slow, st.nodes)) if limit else []
        moved = moved_bytes(addrs, dones, st.size)
        if node_cpu and kill_at is None:  # a restarted node's CPU starts again at 0
            res.cpu_per_gib = [c / (b / 2**30) for c, b in zip(node_cpu, moved, strict=True)]
        if pub_cpu is not None and res.seed_ratio:
            res.pub_cpu_per_gib = pub_cpu / (res.seed_ratio * st.size / 2**30)
    elif not res.note:
        res.note = f"{sum(1 for d in dones if d)}/{st.nodes} nodes completed"
    if st.e2e and kill_at is None:
        e2e_measure(res, evs, t_publish)
    if kill_at is not None and dones[victim] and "missing" in res.extra:
        sources = dones[victim][-1].get("sources")
        fetched = sum(int(v) for v in sources.values()) if isinstance(sources, dict) else 0
        res.extra["fetched_after_restart"] = fetched
        res.extra["refetched"] = max(0, fetched - int(res.extra["missing"]))
    return res


# -- end to end (--e2e): publish start -> every node's target installed and healthy ------


def e2e_node_args(d: Path) -> list[str]:
    """A file target for the channel and a trivial health check (``true``): the install
    (copy to staging, fsync, rename) and the check run as they would in a fleet."""
    return ["--target", f"{CHANNEL}={d / 'target.bin'}", "--health-cmd", f"{CHANNEL}=true"]


def _installed(ev: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in ev if e.get("event") == "update_complete" and e.get("channel") == CHANNEL]


def e2e_wait_installed(events: list[Path], deadline: float) -> None:
    """``publish`` exits once every node has the package; wait for the installs too."""
    while time.monotonic() < deadline:
        if all(_installed(read_events(ev)) for ev in events):
            return
        time.sleep(0.05)


def e2e_measure(res: Result, evs: list[list[dict[str, object]]], t_publish: float) -> None:
    """End-to-end time (from the start of the ``publish`` process to the last node's
    ``update_complete``) and its split, all on the same clock (unix time)."""

    def first(name: str, pick: Callable[[list[float]], float]) -> float | None:
        ts = [
            float(e["t"])  # type: ignore[arg-type]
            for ev in evs
            for e in ev
            if e.get("event") == name and e.get("channel") == CHANNEL
        ]
        return pick(ts) - t_publish if ts else None

    installs = [_installed(ev) for ev in evs]
    if not all(installs):
        res.note = (res.note + "; " if res.note else "") + (
            f"{sum(1 for i in installs if i)}/{len(evs)} installed"
        )
        return
    res.extra["e2e"] = max(float(i[-1]["t"]) for i in installs) - t_publish  # type: ignore[arg-type]
    for key, name, pick in (
        ("e2e_announced", "announcement_received", min),
        ("e2e_started", "download_started", min),
        ("e2e_downloaded", "download_complete", max),
    ):
        t = first(name, pick)
        if t is not None:
            res.extra[key] = t


def e2e_print(results: list[Result]) -> None:
    """One line per run measured end to end: the time, its ratio to the bound, the split."""
    for r in results:
        if "e2e" not in r.extra:
            continue
        e = r.extra
        xb = f" = {e['e2e'] / r.bound:.2f}x the bound" if r.bound else ""
        print(
            f"{r.name}: end to end {e['e2e']:.2f} s{xb} (transfer only "
            f"{fmt(r.seconds, '.2f')} s); from publish start: first announcement "
            f"{fmt(e.get('e2e_announced'), '.2f')} s, first download "
            f"{fmt(e.get('e2e_started'), '.2f')} s, last download complete "
            f"{fmt(e.get('e2e_downloaded'), '.2f')} s, last install {e['e2e']:.2f} s"
        )


def missing_chunks(data_dir: Path, st: Setup) -> int:
    """Chunks whose bytes in the (dead) node's partial file are not the package's."""
    parts = list((data_dir / "store" / "partial").glob("*.part"))
    nchunks = -(-st.size // CHUNK)
    if not parts:
        return nchunks
    missing = 0
    with open(parts[0], "rb") as a, open(st.package, "rb") as b:
        for _ in range(nchunks):
            if a.read(CHUNK) != b.read(CHUNK):
                missing += 1
    return missing


# -- libtorrent --------------------------------------------------------------------------


def run_libtorrent(st: Setup, name: str, limit: int) -> Result:
    limits = st.limits(limit)
    res = Result(name, bound=kumar_ross_unequal(st.size, limit, limits))
    try:
        import libtorrent as lt
    except ImportError as exc:
        res.note = f"skipped: {exc}"
        return res
    run = fresh_dir(st.work, name)
    with warnings.catch_warnings():  # the file_storage API is deprecated but stable
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(st.package))
        ct = lt.create_torrent(fs, CHUNK)
        lt.set_piece_hashes(ct, str(st.package.parent))
    torrent = run / "package.torrent"
    torrent.write_bytes(lt.bencode(ct.generate()))
    ports = free_ports(st.nodes + 1)
    procs = []
    for i, port in enumerate(ports):
        save = st.package.parent if i == 0 else run / f"l{i:02d}"
        save.mkdir(exist_ok=True)
        argv = [
            sys.executable, str(HERE / "_lt_peer.py"),
            "--torrent", str(torrent),
            "--save", str(save),
            "--port", str(port),
            "--upload-limit", str(limit if i == 0 else limits[i - 1]),
        ]  # fmt: skip
        if i == 0:
            argv.append("--seed")
        procs.append(spawn(argv, stdout=run / f"p{i:02d}.out", stdin=True))
    try:
        outs = [run / f"p{i:02d}.out" for i in range(len(procs))]
        deadline = time.monotonic() + 60
        while not all("ready" in o.read_text() for o in outs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                res.note = "libtorrent peers did not start"
                return res
            time.sleep(0.05)
        t0 = time.time()
        everyone = [f"127.0.0.1:{p}" for p in ports]
        for i, p in enumerate(procs):
            assert p.stdin is not None
            # Leecher i (node i - 1) is given the seed and the same others as p2pupdate's.
            peers = (
                [] if i == 0 else [everyone[0], *bootstrap_peers(everyone[1:], i - 1, st.bootstrap)]
            )
            p.stdin.write(("go " + " ".join(peers) + "\n").encode())
            p.stdin.flush()
        deadline = time.monotonic() + st.timeout
        dones: dict[int, float] = {}
        while len(dones) < st.nodes and time.monotonic() < deadline:
            for i in range(1, len(procs)):
                if i not in dones:
                    m = re.search(r"done ([\d.]+)", outs[i].read_text())
                    if m:
                        dones[i] = float(m.group(1))
            time.sleep(0.05)
        res.rss = max(vm_hwm(p.pid) for p in procs[1:])
        if len(dones) == st.nodes:
            res.seconds = max(dones.values()) - t0
            res.per_node = [dones[i] - t0 for i in range(1, len(procs))]
            res.slow_nodes = list(range(st.nodes - st.slow, st.nodes)) if limit else []
        else:
            res.note = f"{len(dones)}/{st.nodes} done before the timeout"
        seed = procs[0]
        assert seed.stdin is not None
        seed.stdin.write(b"stats\n")
        seed.stdin.flush()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = re.search(r"up (\d+)", outs[0].read_text())
            if m:
                res.seed_ratio = int(m.group(1)) / st.size
                break
            time.sleep(0.02)
        for p in procs:
            with contextlib.suppress(BrokenPipeError):
                assert p.stdin is not None
                p.stdin.write(b"quit\n")
                p.stdin.flush()
    finally:
        for p in procs:
            stop(p, grace=2.0)
    return res


# -- main --------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="bench-swarm-", dir=base))
    try:
        yield path
    finally:
        if keep:
            print(f"(files kept in {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="100MiB", help="package size (default 100MiB)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--limit", default="10MiB/s", help="upload limit of every peer")
    ap.add_argument(
        "--only",
        default="swarm,central,libtorrent,kill,tls",
        help="comma list of: swarm, central, libtorrent, kill, tls (default all)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="make every run this many times")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, events)")
    ap.add_argument(
        "--slow",
        type=int,
        default=0,
        help="this many nodes upload at --slow-rate (only the limited runs are made)",
    )
    ap.add_argument("--slow-rate", default="0", help="upload limit of the slow nodes")
    ap.add_argument(
        "--bootstrap", type=int, default=0, help="give each node this many others (0 = all)"
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="also run the limited swarm beside this many busy loops (one core each)",
    )
    ap.add_argument(
        "--e2e",
        action="store_true",
        help="give each node a file target; also time publish start -> last install",
    )
    a = ap.parse_args()
    size = parse_size(a.size)
    limit = parse_rate(a.limit)
    slow_rate = parse_rate(a.slow_rate)
    if a.slow and not (0 < a.slow <= a.nodes and slow_rate > 0):
        ap.error("--slow needs 1..--nodes nodes and a positive --slow-rate")
    only = set(a.only.split(","))
    if not 1 <= a.nodes <= 100 or size < CHUNK or limit <= 0:
        ap.error("need 1..100 nodes, a size of at least 64 KiB and a positive limit")
    results: list[Result] = []
    try:
        with workdir(a.keep) as work:
            package = work / "pkg" / "package.bin"
            package.parent.mkdir()
            with open(package, "wb") as f:
                left = size
                while left:
                    n = min(left, 1 << 22)
                    f.write(os.urandom(n))
                    left -= n
            key = work / "authority.key"
            out = subprocess.run(
                [str(BIN), "keygen", "--out", str(key)], capture_output=True, text=True, check=True
            )
            pubkey = out.stdout.strip().splitlines()[-1]
            central_limited = a.nodes * size / limit
            st = Setup(
                work, package, size, a.nodes, key, pubkey, 60 + 3 * central_limited,
                slow=a.slow, slow_rate=slow_rate, bootstrap=a.bootstrap, e2e=a.e2e,
            )  # fmt: skip
            plan: list[tuple[str, Callable[[], Result]]] = []
            lim = f"{format_size(limit)}/s"
            if "swarm" in only and not a.slow:
                plan.append(("p2pupdate unlimited", lambda: run_p2pupdate(st, "p2p-unl", 0)))
            if "central" in only and not a.slow:
                plan.append(
                    ("centralized unlimited", lambda: run_p2pupdate(st, "cen-unl", 0, central=True))
                )
            if "libtorrent" in only and not a.slow:
                plan.append(("libtorrent unlimited", lambda: run_libtorrent(st, "lt-unl", 0)))
            if "tls" in only and not a.slow:
                plan.append(
                    (
                        "p2pupdate unlimited, TLS",
                        lambda: run_p2pupdate(st, "tls-unl", 0, encrypt=True),
                    )
                )
            if "swarm" in only:
                plan.append((f"p2pupdate {lim}", lambda: run_p2pupdate(st, "p2p-lim", limit)))
                if a.busy:
                    plan.append(
                        (
                            f"p2pupdate {lim}, {a.busy} busy",
                            lambda: run_p2pupdate(st, "p2p-busy", limit, busy=a.busy),
                        )
                    )
            if "central" in only:
                plan.append(
                    (
                        f"centralized {lim}",
                        lambda: run_p2pupdate(st, "cen-lim", limit, central=True),
                    )
                )
            if "libtorrent" in only:
                plan.append((f"libtorrent {lim}", lambda: run_libtorrent(st, "lt-lim", limit)))
            if "tls" in only:
                plan.append(
                    (
                        f"p2pupdate {lim}, TLS",
                        lambda: run_p2pupdate(st, "tls-lim", limit, encrypt=True),
                    )
                )
            if "kill" in only:
                plan.append(
                    (
                        f"p2pupdate {lim}, kill -9",
                        lambda: run_p2pupdate(st, "p2p-kill", limit, kill_at=0.5),
                    )
                )
            slow = f" ({a.slow} nodes at {format_size(slow_rate)}/s)" if a.slow else ""
            boot = f", each node given {a.bootstrap} others" if a.bootstrap else ""
            print(
                f"{a.nodes} nodes + 1 seed, {format_size(size)} package on "
                f"{'tmpfs' if str(work).startswith('/dev/shm') else 'disk'}, limit {lim}"
                f"{slow}{boot}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            for _ in range(a.repeat):
                results = []
                for label, fn in plan:
                    t = time.monotonic()
                    r = fn()
                    r.name = label
                    results.append(r)
                    print(
                        f"  {label}: done in {time.monotonic() - t:.1f} s wall, "
                        f"load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                print_table(results, size, a.nodes, ["unlimited", lim], a.busy)
                e2e_print(results)
    finally:
        kill_all()
    return 0


def print_table(
    results: list[Result], size: int, nodes: int, suffixes: list[str], busy: int = 0
) -> None:
    by = {r.name: r for r in results}
    print()
    print(
        f"{'run':<34} {'time s':>8} {'x bound':>8} {'goodput MiB/s':>14} "
        f"{'seed up x':>10} {'peak RSS MiB':>13} {'nodes CPU s':>12}  note"
    )
    for r in results:
        xb = r.seconds / r.bound if r.seconds and r.bound else None
        gp = nodes * size / r.seconds / 2**20 if r.seconds else None
        print(
            f"{r.name:<34} {fmt(r.seconds, '8.2f')} {fmt(xb, '8.2f')} {fmt(gp, '14.1f')} "
            f"{fmt(r.seed_ratio, '10.2f')} {r.rss / 2**20:13.1f} "
            f"{fmt(r.extra.get('cpu'), '12.2f')}  {r.note}"
        )
    print()

    def ratio(a: str, b: str, what: str) -> None:
        ra, rb = by.get(a), by.get(b)
        if ra and rb and ra.seconds and rb.seconds:
            print(f"{what}: {ra.seconds / rb.seconds:.2f}")

    for suffix in suffixes:
        ratio(f"centralized {suffix}", f"p2pupdate {suffix}", f"centralized / p2pupdate, {suffix}")
        ratio(f"p2pupdate {suffix}", f"libtorrent {suffix}", f"p2pupdate / libtorrent, {suffix}")
        ratio(f"p2pupdate {suffix}, TLS", f"p2pupdate {suffix}", f"TLS / plain, {suffix}")
        ta, tb = by.get(f"p2pupdate {suffix}, TLS"), by.get(f"p2pupdate {suffix}")
        if ta and tb and ta.extra.get("cpu") and tb.extra.get("cpu"):
            print(f"TLS / plain nodes CPU, {suffix}: {ta.extra['cpu'] / tb.extra['cpu']:.2f}")
        quiet, loaded = by.get(f"p2pupdate {suffix}"), by.get(f"p2pupdate {suffix}, {busy} busy")
        if quiet and loaded and quiet.seconds and loaded.seconds and quiet.bound:
            print(
                f"x bound, {suffix}: {quiet.seconds / quiet.bound:.2f} quiet, "
                f"{loaded.seconds / quiet.bound:.2f} beside {busy} busy core(s)"
            )
    for r in results:
        if r.cpu_per_gib:
            per = sorted(r.cpu_per_gib)
            print(
                f"{r.name}: CPU s per GiB moved (received + served) per node: "
                f"median {per[len(per) // 2]:.2f}, max {per[-1]:.2f}, min {per[0]:.2f}; "
                f"publisher {fmt(r.pub_cpu_per_gib, '.2f')} per GiB uploaded"
            )
    for r in results:
        if r.per_node:
            slow = set(r.slow_nodes)
            ends = ", ".join(
                f"n{i:02d}{'*' if i in slow else ''} {t:.1f}" for i, t in enumerate(r.per_node)
            )
            print(
                f"{r.name}: per-node completion s (* = slow) {ends}; "
                f"spread {max(r.per_node) - min(r.per_node):.2f} s"
            )
        if r.from_seed:
            got = ", ".join(
                f"n{i:02d}{'*' if i in set(r.slow_nodes) else ''} {c}"
                for i, c in enumerate(r.from_seed)
            )
            print(f"{r.name}: chunks from the seed per node {got}")
    for r in results:
        if "refetched" in r.extra:
            n = -(-size // CHUNK)
            print(
                f"kill -9 at {r.extra['killed_at']:.0%}: {int(r.extra['missing'])} of {n} chunks "
                f"missing, {int(r.extra['fetched_after_restart'])} fetched after restart, "
                f"refetched {int(r.extra['refetched'])} = "
                f"{r.extra['refetched'] / n:.2%} of the package (target <= 2%)"
            )
        elif "killed_at" in r.extra or r.name.endswith("kill -9"):
            print(f"kill -9: no measure ({r.note or 'the victim did not complete'})")


if __name__ == "__main__":
    sys.exit(main())
