"""Pure applicator decisions: the upgrade gate, the attempt/confirm machine,
recovery and the archive path rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core import apply as core
from p2pupdate.core import archive
from p2pupdate.core.apply import (
    Confirmed,
    ConfirmMachine,
    ConfirmState,
    GiveUp,
    PersistAttempt,
    RunHealthCheck,
    RunRestart,
    WaitUntil,
)
from p2pupdate.core.archive import Accept, ArchiveMember, Refuse
from p2pupdate.core.policy import install_decision
from p2pupdate.errors import ApplyError

MiB = 1024 * 1024

# ---------------------------------------------------------------------------
# Versions and the upgrade gate
# ---------------------------------------------------------------------------


def test_parse_version_drops_build_metadata() -> None:
    assert str(core.parse_version("1.2.3-rc.1+build.7")) == "1.2.3-rc.1"
    assert core.compare_versions("1.2.3+a", "1.2.3+b") == 0
    assert core.compare_versions("1.2.3-rc.1", "1.2.3") == -1
    assert core.compare_versions("1.10.0", "1.9.0") == 1


@pytest.mark.parametrize("bad", ["", "1.2", "v1.2.3", "1.2.3.4", "1.2.3-" + "a" * 60, "x"])
def test_parse_version_refuses_non_semver_and_long(bad: str) -> None:
    with pytest.raises(ValueError):
        core.parse_version(bad)


@pytest.mark.parametrize(
    ("installed", "new", "kwargs", "expected"),
    [
        (None, "1.0.0", {}, None),
        ("1.0.0", "1.0.1", {}, None),
        ("1.0.0", "1.0.0", {}, core.NOT_NEWER),
        ("1.0.0+b1", "1.0.0+b2", {}, core.NOT_NEWER),
        ("1.1.0", "1.0.9", {}, core.NOT_NEWER),
        ("1.0.0", "1.0.0-rc.1", {}, core.NOT_NEWER),
        ("1.1.0", "1.0.9", {"explicit_rollback": True}, None),
        ("not semver", "1.0.0", {}, None),  # unknown installed version: anything is newer
        ("1.0.0", "2.0", {}, core.BAD_VERSION),
        ("1.0.0", "2.0.0", {"quarantined": ["2.0.0"]}, core.QUARANTINED),
        ("1.0.0", "2.0.0+b9", {"quarantined": ["2.0.0+b1"]}, core.QUARANTINED),
        ("3.0.0", "2.0.0", {"quarantined": ["2.0.0"]}, core.QUARANTINED),
        (
            "1.0.0",
            "2.0.0",
            {"explicit_rollback": True, "quarantined": ["2.0.0"]},
            core.QUARANTINED,
        ),
        ("1.0.0", "2.0.0", {"size": 10 * MiB + 1}, core.TOO_LARGE),
        ("1.0.0", "2.0.0", {"size": 10 * MiB}, None),
        ("1.0.0", "2.0.0", {"size": -1}, core.TOO_LARGE),
        ("1.0.0", "2.0.0", {"min_version": "1.5.0"}, core.BELOW_MIN_VERSION),
        ("1.5.0", "2.0.0", {"min_version": "1.5.0"}, None),
        (None, "2.0.0", {"min_version": "1.5.0"}, None),  # unknown: not known to be below
        ("1.0.0", "2.0.0", {"min_version": "1.5.0", "explicit_rollback": True}, None),
    ],
)
def test_install_decision_table(
    installed: str | None, new: str, kwargs: dict[str, object], expected: str | None
) -> None:
    """The one act gate (core.policy.install_decision), as the applicator asks it."""
    args: dict[str, object] = {"quarantined": [], "size": 1000, "max_size": 10 * MiB}
    args.update(kwargs)
    decision = install_decision(new, installed_version=installed, **args)  # type: ignore[arg-type]
    if expected is not None:
        assert not decision.ok
        assert decision.reason == expected
        assert decision.detail  # every refusal says why, apart from the code
    else:
        assert decision.ok


versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-rc.{pre}" if pre is not None else ""),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.none() | st.integers(0, 2),
)


@given(
    installed=st.none() | versions,
    new=versions,
    quarantined=st.lists(versions, max_size=3),
    size=st.integers(-1, 200),
    max_size=st.integers(0, 200),
    explicit=st.booleans(),
    min_version=st.none() | versions,
)
def test_install_decision_refuses_exactly_when_a_rule_says_so(
    installed: str | None,
    new: str,
    quarantined: list[str],
    size: int,
    max_size: int,
    explicit: bool,
    min_version: str | None,
) -> None:
    d = install_decision(
        new,
        size=size,
        installed_version=installed,
        quarantined=quarantined,
        max_size=max_size,
        min_version=min_version,
        explicit_rollback=explicit,
    )
    q = any(core.compare_versions(new, v) == 0 for v in quarantined)
    big = size < 0 or size > max_size
    old = installed is not None and core.compare_versions(new, installed) <= 0
    below = (
        min_version is not None
        and installed is not None
        and core.compare_versions(installed, min_version) < 0
    )
    # Priority: quarantined, too_large, then (unless explicit) not_newer, below_min_version.
    if q:
        assert not d.ok and d.reason == core.QUARANTINED
    elif big:
        assert not d.ok and d.reason == core.TOO_LARGE
    elif not explicit and old:
        assert not d.ok and d.reason == core.NOT_NEWER
    elif not explicit and below:
        assert not d.ok and d.reason == core.BELOW_MIN_VERSION
    else:
        assert d.ok
    if d.ok and not explicit:
        assert core.is_newer(new, installed)  # never a downgrade without an explicit request


# ---------------------------------------------------------------------------
# ConfirmMachine
# ---------------------------------------------------------------------------


def machine(
    *, done: int = 0, max_attempts: int = 3, window: float = 10.0, restart: bool = True
) -> ConfirmMachine:
    return ConfirmMachine(
        attempts_done=done,
        max_attempts=max_attempts,
        window=window,
        has_restart=restart,
        health_timeout=3.0,
    )


def test_without_restart_one_passing_check_confirms() -> None:
    m = machine(restart=False)
    assert m.start(0.0) == PersistAttempt(1)
    assert m.on_installed(0.0) == RunHealthCheck(3.0)
    assert m.on_health_result(True, 0.5) == Confirmed()
    assert m.state is ConfirmState.CONFIRMED and m.done


def test_without_restart_one_failing_check_is_final() -> None:
    m = machine(restart=False)
    m.start(0.0)
    m.on_installed(0.0)
    assert m.on_health_result(False, 3.0, core.HEALTH_TIMEOUT) == GiveUp(core.HEALTH_TIMEOUT)
    assert m.attempts_done == 1  # --version gives the same answer twice: no retry


def test_restart_then_checks_inside_the_window_until_one_passes() -> None:
    m = machine(window=10.0)
    m.start(0.0)
    assert m.on_installed(0.0) == RunRestart(3.0)
    assert m.on_restart_result(True, 1.0) == RunHealthCheck(3.0)
    wait = m.on_health_result(False, 1.2)
    assert wait == WaitUntil(1.2 + core.check_interval(10.0))
    assert isinstance(wait, WaitUntil)
    assert m.on_timer(wait.deadline) == RunHealthCheck(3.0)
    assert m.on_health_result(True, 2.0) == Confirmed()
    assert m.attempts_done == 1


def test_window_running_out_is_a_failed_attempt_and_restarts_again() -> None:
    m = machine(window=1.0, max_attempts=2)
    m.start(0.0)
    m.on_installed(0.0)
    m.on_restart_result(True, 0.0)  # window ends at 1.0
    now = 0.0
    action = m.on_health_result(False, now)
    while isinstance(action, WaitUntil):
        now = action.deadline
        action = m.on_timer(now)
        assert isinstance(action, RunHealthCheck)
        assert action.timeout <= 1.0 - now + 1e-9  # a check never runs past the window
        now += 0.01
        action = m.on_health_result(False, now)
    assert action == PersistAttempt(2)  # the counter is persisted before the restart
    assert m.on_installed(now) == RunRestart(3.0)
    m.on_restart_result(True, now)
    action = m.on_health_result(False, now + 0.99)
    assert action == GiveUp(core.NOT_CONFIRMED)


def test_failed_restart_counts_as_a_failed_attempt() -> None:
    m = machine(max_attempts=2)
    m.start(0.0)
    m.on_installed(0.0)
    assert m.on_restart_result(False, 1.0) == PersistAttempt(2)
    m.on_installed(1.0)
    assert m.on_restart_result(False, 2.0) == GiveUp(core.RESTART_FAILED)


def test_restart_command_that_cannot_start_gives_up_without_quarantine() -> None:
    m = machine(max_attempts=3)
    m.start(0.0)
    m.on_installed(0.0)
    action = m.on_restart_result(False, 1.0, started=False)
    assert action == GiveUp(core.RESTART_NOT_STARTED, quarantine=False)
    assert m.done and m.attempts_done == 1  # no more attempts: the host is at fault
    assert not core.quarantines(core.RESTART_NOT_STARTED)
    assert core.quarantines(core.RESTART_FAILED) and core.quarantines(core.HEALTH_CHECK_FAILED)


def test_attempts_from_a_crashed_run_count() -> None:
    m = machine(done=2, max_attempts=3)
    assert m.start(0.0) == PersistAttempt(3)
    m.on_installed(0.0)
    assert m.on_restart_result(False, 0.0) == GiveUp(core.RESTART_FAILED)


def test_used_up_attempts_give_up_at_once() -> None:
    m = machine(done=3, max_attempts=3)
    assert m.start(0.0) == GiveUp(core.TOO_MANY_ATTEMPTS)
    assert m.state is ConfirmState.GAVE_UP


def test_illegal_transition_raises_and_error_is_sticky() -> None:
    m = machine()
    with pytest.raises(ApplyError) as info:
        m.on_health_result(True, 0.0)
    assert info.value.reason == "illegal_transition"
    assert m.state is ConfirmState.ERROR
    with pytest.raises(ApplyError):
        m.start(0.0)  # legal in READY, but ERROR is sticky


def test_terminal_states_accept_nothing() -> None:
    m = machine(restart=False)
    m.start(0.0)
    m.on_installed(0.0)
    m.on_health_result(True, 0.0)
    with pytest.raises(ApplyError):
        m.start(1.0)
    with pytest.raises(ApplyError):
        m.on_installed(1.0)
    with pytest.raises(ApplyError):
        m.on_health_result(True, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"done": -1}, {"window": 0.0}],
)
def test_machine_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        machine(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(
    done=st.integers(0, 4),
    max_attempts=st.integers(1, 4),
    restart=st.booleans(),
    window=st.floats(0.1, 5.0),
    results=st.lists(st.tuples(st.booleans(), st.floats(0.0, 2.0)), max_size=200),
)
def test_machine_invariants(
    done: int,
    max_attempts: int,
    restart: bool,
    window: float,
    results: list[tuple[bool, float]],
) -> None:
    """Drive the machine with arbitrary results and delays; check what must always hold."""
    m = machine(done=done, max_attempts=max_attempts, window=window, restart=restart)
    now = 0.0
    action = m.start(now)
    persisted: list[int] = []
    window_start: float | None = None
    last_health_ok = False
    feed = iter(results)
    for _ in range(2000):
        if m.done:
            break
        match action:
            case PersistAttempt(attempt=n):
                persisted.append(n)
                action = m.on_installed(now)
            case RunRestart():
                ok, dt = next(feed, (True, 0.1))
                now += dt
                window_start = now
                action = m.on_restart_result(ok, now)
            case RunHealthCheck(timeout=t):
                assert 0 < t <= 3.0
                ok, dt = next(feed, (False, 0.1))
                now += min(dt, t)
                last_health_ok = ok
                if restart:
                    assert window_start is not None
                    assert now <= window_start + window + 1e-9  # checks stay in the window
                action = m.on_health_result(ok, now)
            case WaitUntil(deadline=d):
                assert d > now
                now = d
                action = m.on_timer(now)
    assert m.done, "the machine must end"
    # Attempts are persisted one by one, continuing the earlier count, within the bound.
    assert persisted == list(range(done + 1, done + 1 + len(persisted)))
    assert (persisted[-1] if persisted else done) <= max(max_attempts, done)
    if not restart:
        assert len(persisted) <= 1
    if isinstance(action, Confirmed):
        assert last_health_ok and persisted
    else:
        assert isinstance(action, GiveUp)
        if done >= max_attempts:
            assert action.reason == core.TOO_MANY_ATTEMPTS and not persisted
        elif restart:
            assert persisted[-1] == max_attempts  # every attempt was used first


# ---------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------


def test_recovery_decision_table() -> None:
    assert core.recovery_decision("installing", 1, 3, True) == core.RecoverRetry()
    assert core.recovery_decision("installing", 1, 3, False) == core.RecoverWait()
    assert core.recovery_decision("installing", 3, 3, True) == core.RecoverGiveUp(
        core.TOO_MANY_ATTEMPTS
    )
    assert core.recovery_decision(
        "rolling_back", 1, 3, True, core.NOT_CONFIRMED
    ) == core.RecoverFinishRollback(core.NOT_CONFIRMED)
    assert core.recovery_decision("rolling_back", 0, 3, False) == core.RecoverFinishRollback(
        core.INTERRUPTED
    )
    with pytest.raises(ValueError):
        core.recovery_decision("bogus", 0, 3, True)


@given(max_attempts=st.integers(1, 6))
def test_repeated_crashes_end_in_give_up_after_the_bound(max_attempts: int) -> None:
    """Each run persists attempt n+1 then crashes; recovery gives up exactly at the bound."""
    attempts = 0
    retries = 0
    while True:
        d = core.recovery_decision("installing", attempts, max_attempts, True)
        if isinstance(d, core.RecoverGiveUp):
            break
        assert isinstance(d, core.RecoverRetry)
        retries += 1
        attempts += 1  # the retry persists its attempt, then the process dies again
    assert attempts == max_attempts
    assert retries == max_attempts


# ---------------------------------------------------------------------------
# Archive members
# ---------------------------------------------------------------------------


def members(
    *specs: tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str],
) -> list[ArchiveMember]:
    return [ArchiveMember(*spec) for spec in specs]


def test_check_archive_accepts_an_ordinary_release() -> None:
    ok = members(
        ("./", "dir"),
        ("bin", "dir"),
        ("bin/app", "file", 100),
        ("lib", "dir"),
        ("lib/x.so", "file", 50),
        ("lib64", "symlink", 0, "lib"),
        ("bin/app2", "hardlink", 0, "bin/app"),
        ("share/doc/link", "symlink", 0, "../../lib/x.so"),
    )
    assert archive.check_archive(ok, 1000, 100) == Accept()


@pytest.mark.parametrize(
    "bad",
    [
        members(("/etc/passwd", "file", 1)),
        members(("../evil", "file", 1)),
        members(("a/../../evil", "file", 1)),
        members(("a/b/../../../evil", "file", 1)),
        members(("link", "symlink", 0, "/etc")),
        members(("link", "symlink", 0, "../outside")),
        members(("a/link", "symlink", 0, "../../outside")),
        members(("link", "symlink", 0, ".."), ("link/evil", "file", 1)),
        members(("link", "symlink", 0, "."), ("link/x", "file", 1)),  # writes through a link
        members(("hl", "hardlink", 0, "/etc/shadow")),
        members(("hl", "hardlink", 0, "../x")),
        members(("hl", "hardlink", 0, "not-there")),
        members(("dev", "device")),
        members(("pipe", "fifo")),
        members(("big", "sparse", 10)),
        members(("a", "file", 600), ("b", "file", 500)),  # unpacks past the limit
        members(("a", "file", 1), ("a", "symlink", 0, "/etc/passwd")),  # duplicate
        members(("", "file", 1)),
        members(("a\x00b", "file", 1)),
        members(("x", "file", -1)),
        members((".", "file", 1)),
    ],
)
def test_check_archive_refuses_hostile_members(bad: list[ArchiveMember]) -> None:
    d = archive.check_archive(bad, 1000, 100)
    assert isinstance(d, Refuse) and d.reason == core.BAD_ARCHIVE


def test_check_archive_caps_member_count() -> None:
    many = [ArchiveMember(f"f{i}", "file", 0) for i in range(11)]
    assert isinstance(archive.check_archive(many, 1000, 10), Refuse)
    assert archive.check_archive(many[:10], 1000, 10) == Accept()


_segment = st.sampled_from(["a", "b", "..", ".", "", "c"])
_path = st.lists(_segment, min_size=1, max_size=5).map("/".join)


@settings(max_examples=500)
@given(
    specs=st.lists(
        st.tuples(
            st.booleans().map(lambda absolute: "/" if absolute else ""),
            _path,
            st.sampled_from(["file", "dir", "symlink", "hardlink"]),
            _path,
        ),
        max_size=6,
    )
)
def test_accepted_archives_never_point_outside(
    specs: list[tuple[str, str, str, str]],
) -> None:
    ms = [ArchiveMember(p + name, kind, 1, link) for p, name, kind, link in specs]
    if not isinstance(archive.check_archive(ms, 10**6, 100), Accept):
        return
    for m in ms:
        depth = 0
        for part in m.name.split("/"):
            depth += {"..": -1, ".": 0, "": 0}.get(part, 1)
            assert depth >= 0
        assert not m.name.startswith("/")
        if m.kind in ("symlink", "hardlink"):
            assert not m.linkname.startswith("/")
            start = m.name.split("/")[:-1] if m.kind == "symlink" else []
            depth = sum({"..": -1, ".": 0, "": 0}.get(p, 1) for p in start if p not in ("", "."))
            for part in m.linkname.split("/"):
                depth += {"..": -1, ".": 0, "": 0}.get(part, 1)
                assert depth >= 0


@pytest.mark.parametrize(
    "bad",
    [
        # The case: each link is lexically inside, the chain is not.
        members(("x", "symlink", 0, "."), ("a", "symlink", 0, "x/..")),
        # The same in the other order: the unpacked tree has both links.
        members(("a", "symlink", 0, "x/.."), ("x", "symlink", 0, ".")),
        members(("d", "dir"), ("d/up", "symlink", 0, ".."), ("a", "symlink", 0, "d/up/..")),
        members(
            ("x", "symlink", 0, "."), ("y", "symlink", 0, "x/x/x"), ("z", "symlink", 0, "y/..")
        ),
        members(("p", "symlink", 0, "q"), ("q", "symlink", 0, "p")),  # a loop
    ],
)
def test_check_archive_resolves_symlink_chains(bad: list[ArchiveMember]) -> None:
    d = archive.check_archive(bad, 1000, 100)
    assert isinstance(d, Refuse) and d.reason == core.BAD_ARCHIVE, d


def test_check_archive_accepts_chains_that_stay_inside() -> None:
    ok = members(
        ("lib", "dir"),
        ("lib/real.so", "file", 10),
        ("lib/x.so", "symlink", 0, "real.so"),
        ("cur", "symlink", 0, "."),
        ("l2", "symlink", 0, "cur/lib/x.so"),
        ("d", "dir"),
        ("d/up", "symlink", 0, ".."),
        ("d/lib", "symlink", 0, "up/lib"),
    )
    assert archive.check_archive(ok, 1000, 100) == Accept()


def test_a_long_chain_of_links_is_bounded() -> None:
    chain = [ArchiveMember("l0", "symlink", 0, ".")]
    chain += [ArchiveMember(f"l{i}", "symlink", 0, f"l{i - 1}") for i in range(1, 60)]
    d = archive.check_archive(chain, 1000, 100)
    assert isinstance(d, Refuse) and d.reason == core.BAD_ARCHIVE
    assert archive.check_archive(chain[: archive.MAX_LINK_HOPS], 1000, 100) == Accept()


_link_target = st.lists(st.sampled_from(["a", "b", "c", "..", "."]), min_size=1, max_size=4).map(
    "/".join
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d/a", "d/b"]),
            st.sampled_from(["symlink", "dir"]),
            _link_target,
        ),
        max_size=6,
        unique_by=lambda s: s[0],
    )
)
def test_accepted_links_resolve_inside_on_a_real_filesystem(
    specs: list[tuple[str, str, str]],
) -> None:
    """Build what an accepted archive describes, then ask the kernel where each link leads."""
    import os
    import tempfile

    ms = [
        ArchiveMember(name, kind, 0, link if kind == "symlink" else "")
        for name, kind, link in specs
    ]
    if not isinstance(archive.check_archive(ms, 10**6, 100), Accept):
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(os.path.join(tmp, "release"))
        os.mkdir(root)
        for m in ms:
            path = os.path.join(root, m.name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                return  # an implicit parent dir named like a later member; not this test
            if m.kind == "dir":
                os.mkdir(path)
            else:
                os.symlink(m.linkname, path)
        for m in ms:
            if m.kind == "symlink":
                real = os.path.realpath(os.path.join(root, m.name))
                assert os.path.commonpath([real, root]) == root, (m, real)
