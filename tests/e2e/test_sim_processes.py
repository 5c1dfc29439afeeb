"""No process is left behind, and network namespaces are made and removed cleanly.

* :class:`Supervisor` stops whole process groups (grandchildren included), and
  a child dies with its harness even when the harness is killed by SIGKILL.
* ``p2pupdate sim`` interrupted by SIGINT (Ctrl-C), SIGTERM or SIGHUP in the
  middle of a run exits 130, writes a partial report, and leaves no process
  behind (its temporary dir is put under the test's tmp dir with TMPDIR, so
  every process it started has that path on its command line).
* :class:`NetnsNetwork` creates namespaces, veths, a bridge and tbf qdiscs and
  removes all of them; stale ones of a dead harness are swept; without root or
  without iproute2 the message says so. These need root and are skipped (with
  the reason) otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pupdate.sim.harness import sweep_stale_workdirs
from p2pupdate.sim.netns import NetnsError, NetnsNetwork, check_netns_available, sweep_stale
from p2pupdate.sim.procs import Supervisor
from tests.e2e.conftest import sigint_as_in_a_terminal

P2P = (sys.executable, "-m", "p2pupdate")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (never this test process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


# -- the supervisor ----------------------------------------------------------------------


def test_stop_all_kills_whole_process_groups(tmp_path: Path) -> None:
    sup = Supervisor()
    marker = tmp_path / "grandchild.pid"
    # A child that ignores SIGTERM and leaves a grandchild running in its group.
    child = sup.spawn(
        "stubborn",
        ["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {marker}; wait"],
        log_path=tmp_path / "log",
    )
    wait_for("the grandchild", lambda: marker.exists() and marker.read_text().strip() != "")
    grandchild = int(marker.read_text())
    assert alive(child.pid) and alive(grandchild)
    sup.stop_all(grace=0.5)
    assert not alive(child.pid)
    wait_for("the grandchild to die", lambda: not alive(grandchild), timeout=10)
    sup.stop_all()  # idempotent
    sup.close()


def test_reap_kills_orphans_of_a_child_that_exited(tmp_path: Path) -> None:
    sup = Supervisor()
    marker = tmp_path / "orphan.pid"
    child = sup.spawn("parent", ["sh", "-c", f"sleep 300 & echo $! > {marker}"])
    wait_for("the child to exit", lambda: child.proc.poll() is not None)
    orphan = int(marker.read_text())
    assert alive(orphan)
    assert sup.reap() == [child]
    wait_for("the orphan to die", lambda: not alive(orphan), timeout=10)
    assert sup.reap() == []
    sup.close()


def test_children_die_with_a_harness_killed_by_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import sys, time\n"
        "from p2pupdate.sim.procs import Supervisor\n"
        "c = Supervisor().spawn('sleeper', ['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(300)\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for("the child pid", lambda: pidfile.exists() and pidfile.read_text() != "")
        child = int(pidfile.read_text())
        assert alive(child)
    finally:
        harness.kill()
        harness.wait()
    wait_for("the orphaned child to die", lambda: not alive(child), timeout=10)


# -- interrupting a run -------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_interrupted_sim_stops_everything_and_reports(tmp_path: Path, signum: int) -> None:
    scenario = tmp_path / "slow.toml"
    # Slow on purpose (4 MiB at 128 KiB/s): the signal lands in the middle.
    scenario.write_text(
        'base = "ten-nodes"\nnodes = 3\npackage_size = "4MiB"\nupload_limit = "128KiB/s"\n'
    )
    out = tmp_path / "out"
    work = tmp_path / "tmp"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work)}
    proc = subprocess.Popen(
        [*P2P, "sim", str(scenario), "--out", str(out), "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=sigint_as_in_a_terminal,  # the suite may run with SIGINT ignored
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "download started" in line:
                break
        else:
            pytest.fail(
                f"the run ended early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
            )
        running = processes_mentioning(str(tmp_path))
        assert len(running) >= 4  # the harness, 3 nodes (and maybe the publisher)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["ok"] is False
    assert len(report["nodes"]) == 3
    wait_for(
        "every process of the run to be gone", lambda: not processes_mentioning(str(tmp_path)), 10
    )
    assert list(work.iterdir()) == []  # the temporary dirs were removed, children's too


@pytest.mark.sim
def test_sim_killed_by_sigkill_leaves_no_process_and_its_dir_is_swept(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        'base = "ten-nodes"\nnodes = 2\npackage_size = "4MiB"\nupload_limit = "128KiB/s"\n'
    )
    work = tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen(
        [*P2P, "sim", str(scenario), "--out", str(tmp_path / "out"), "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(work)},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "download started" in line:
                break
        assert len(processes_mentioning(str(tmp_path))) >= 3  # harness and 2 nodes
    finally:
        proc.kill()  # SIGKILL: no finally, no atexit in the harness
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # The kernel kills the children (PR_SET_PDEATHSIG).
    wait_for("the orphaned nodes to die", lambda: not processes_mentioning(str(tmp_path)), 10)
    left = list(work.glob("p2pupdate-sim-*"))
    assert len(left) == 1  # nobody could remove it ...
    assert sweep_stale_workdirs(work) == left  # ... until the next run sweeps it
    assert not left[0].exists()


# -- network namespaces -----------------------------------------------------------------


def _netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root; this suite does not run as root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


needs_netns = pytest.mark.skipif(_netns_skip() is not None, reason=_netns_skip() or "")


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False).stdout


@needs_netns
def test_netns_setup_and_teardown_leave_nothing() -> None:
    net = NetnsNetwork(slots=2, rates=[1024 * 1024, 0])
    try:
        net.setup()
        assert net.up and len(net.namespaces) == 2
        namespaces = _ip("netns", "list")
        assert net.namespace(0) in namespaces and net.namespace(1) in namespaces
        qdisc0 = subprocess.run(
            ["tc", "-n", net.namespace(0), "qdisc", "show"], capture_output=True, text=True
        ).stdout
        qdisc1 = subprocess.run(
            ["tc", "-n", net.namespace(1), "qdisc", "show"], capture_output=True, text=True
        ).stdout
        assert "tbf" in qdisc0 and "rate 8388Kbit" in qdisc0  # 1 MiB/s
        assert "tbf" not in qdisc1
        addr = _ip("-n", net.namespace(1), "-4", "addr")
        assert net.address(1) in addr
        # Slot 0 reaches slot 1 over the bridge.
        server = subprocess.Popen(
            net.wrap(1, [sys.executable, "-c",
                         "import socket; s = socket.socket(); "
                         f"s.bind(({net.address(1)!r}, 7777)); s.listen(); "
                         "c, _ = s.accept(); c.sendall(b'pong'); c.close()"]),
        )  # fmt: skip
        try:
            client = (
                "import socket, time\n"
                "for _ in range(100):\n"
                "    try:\n"
                f"        c = socket.create_connection(({net.address(1)!r}, 7777), timeout=2)\n"
                "        break\n"
                "    except OSError:\n"
                "        time.sleep(0.05)\n"
                "print(c.recv(4).decode())\n"
            )
            got = subprocess.run(
                net.wrap(0, [sys.executable, "-c", client]),
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert got.stdout.strip() == "pong", got.stderr
        finally:
            server.kill()
            server.wait()
    finally:
        net.teardown()
    wait_for("links to go", lambda: net.leftovers() == [] or not net.prefix, 10)
    assert net.leftovers() == []
    net.teardown()  # idempotent


@needs_netns
def test_stale_namespaces_of_a_dead_harness_are_swept() -> None:
    stale = "p2s7ffffffx0-0"  # pid 0x7ffffff is above any pid_max: that harness is dead
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale()
        assert stale not in _ip("netns", "list")
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def _python_for_nobody() -> str | None:
    """An interpreter the user nobody may run (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if _readable_by_nobody(Path(candidate).resolve()):
            return candidate
    return None


def _readable_by_nobody(path: Path) -> bool:
    """Whether the user nobody may reach ``path`` (r-x on it and every parent)."""
    try:
        return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])
    except OSError:
        return False


def _package_for_nobody(tmp: Path) -> Path | None:
    """A copy of the package that the user nobody may import, wherever the clone lives.

    The clone may sit in a directory nobody cannot enter (``/root``, any ``mktemp -d``):
    copy the package (sources only) into a world-readable directory and import it there.
    """
    repo = Path(__file__).resolve().parents[2]
    if _readable_by_nobody(repo / "p2pupdate"):
        return repo
    if not _readable_by_nobody(tmp.parent):
        return None
    tmp.mkdir(mode=0o755)
    tmp.chmod(0o755)  # whatever the umask says
    shutil.copytree(
        repo / "p2pupdate", tmp / "p2pupdate", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp


@needs_netns
def test_netns_refuses_clearly_without_root() -> None:
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter here that the user nobody may run")
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        Path(scratch).chmod(0o755)  # mkdtemp makes it 0700
        root = _package_for_nobody(Path(scratch) / "pkg")
        if root is None:
            pytest.skip("no directory here that the user nobody may read")
        _check_netns_as_nobody(python, root)


def _check_netns_as_nobody(python: str, repo: Path) -> None:
    code = (
        "from p2pupdate.sim.netns import check_netns_available, NetnsError\n"
        "try:\n    check_netns_available()\nexcept NetnsError as e:\n    print(e)\n"
    )
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=30,
        user=65534, group=65534, extra_groups=[], cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/", "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert "needs root" in proc.stdout, proc.stderr


@needs_netns
def test_netns_refuses_clearly_without_iproute2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NetnsError, match="needs iproute2"):
        check_netns_available()


@needs_netns
def test_sim_cli_says_why_netns_cannot_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*P2P, "sim", "bandwidth-limited-netns", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": "/nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs iproute2" in proc.stderr
