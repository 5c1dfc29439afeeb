"""Pure self-update decisions: when the installing node follows, what a node reports,
which releases an install keeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core.selfupdate import (
    FAILED_ON_OTHERS,
    NOT_SEEN_HEALTHY,
    QUARANTINED,
    InstallerAction,
    OtherNode,
    OtherState,
    installer_decision,
    other_state,
    retention,
    rollback_notices,
)

V = "1.2.0"
GO, WAIT, ROLL_BACK, SWITCH_BACK = (
    InstallerAction.GO,
    InstallerAction.WAIT,
    InstallerAction.ROLL_BACK,
    InstallerAction.SWITCH_BACK,
)


def node(
    key: str, attempts: int = 0, confirmed: bool = False, alive: bool = True, release: str = "1.1.0"
) -> OtherNode:
    return OtherNode(key, attempts, confirmed, alive, release)


def decide(others: list[OtherNode], now: float = 1.0, quarantined: bool = False) -> InstallerAction:
    return installer_decision(
        others, version=V, quarantined=quarantined, now=now, started=0.0, wait=60.0
    ).action


# -- the state of another node ----------------------------------------------------------


def test_a_node_that_died_on_the_new_release_has_failed() -> None:
    # Its launcher counted a boot; the registered process is gone (restarted by its
    # supervisor, the new process is not registered): a failure, not "finished".
    assert other_state(node("b", attempts=1, alive=False), V) is OtherState.FAILED
    assert other_state(node("b", attempts=1, alive=True), V) is OtherState.BOOTING
    assert other_state(node("b", attempts=1, alive=True, release=V), V) is OtherState.RUNNING
    assert other_state(node("b", attempts=1, confirmed=True), V) is OtherState.HEALTHY
    assert other_state(node("b"), V) is OtherState.NOT_MOVED
    assert other_state(node("b", alive=False), V) is OtherState.GONE


# -- the installing node --------------------------------------------------------------


def test_alone_the_installing_node_goes() -> None:
    assert decide([]) is GO
    assert decide([node("b", alive=False)]) is GO  # stopped, never tried it


def test_never_follows_before_another_node_was_seen_healthy() -> None:
    assert decide([node("b"), node("c")]) is WAIT
    assert decide([node("b", 1, release=V), node("c", 1)]) is WAIT
    assert decide([node("b", 1, confirmed=True), node("c")]) is WAIT  # c still to move
    assert decide([node("b", 1, confirmed=True), node("c", 1, release=V)]) is GO


def test_the_others_dying_on_it_rolls_back_without_running_it() -> None:
    others = [node("b", 1, alive=False), node("c", 2, alive=False)]
    d = installer_decision(others, version=V, quarantined=False, now=0.5, started=0.0, wait=60)
    assert d.action is ROLL_BACK and d.reason == FAILED_ON_OTHERS
    # One still booting or running: not yet (it may be a transient failure of one node).
    assert decide([node("b", 1, alive=False), node("c", 1)]) is WAIT
    assert decide([node("b", 1, alive=False), node("c", 1, release=V)]) is WAIT
    # One healthy: the failure was that node's; the release runs elsewhere.
    assert decide([node("b", 1, alive=False), node("c", 1, confirmed=True)]) is GO


def test_quarantined_meanwhile_rolls_back_whatever_the_others_say() -> None:
    d = installer_decision(
        [node("b", 1, confirmed=True)], version=V, quarantined=True, now=0, started=0, wait=1
    )
    assert d.action is ROLL_BACK and d.reason == QUARANTINED


def test_when_the_wait_is_over() -> None:
    late = 61.0
    # Nobody moved: switch back, no quarantine (nothing failed).
    d = installer_decision([node("b")], version=V, quarantined=False, now=late, started=0, wait=60)
    assert d.action is SWITCH_BACK and d.reason == NOT_SEEN_HEALTHY
    # Somebody failed and nobody confirmed: roll back and quarantine.
    assert decide([node("b", 1, alive=False), node("c")], now=late) is ROLL_BACK
    # Somebody runs it, not confirmed yet: wait for it, up to twice the wait.
    assert decide([node("b", 1, release=V)], now=late) is WAIT
    assert decide([node("b", 1, release=V)], now=121.0) is SWITCH_BACK
    # Somebody confirmed, another never moved: go.
    assert decide([node("b", 1, confirmed=True), node("c")], now=late) is GO


others_st = st.lists(
    st.builds(
        OtherNode,
        key=st.sampled_from("bcdefg"),
        attempts=st.integers(0, 4),
        confirmed=st.booleans(),
        alive=st.booleans(),
        release=st.sampled_from([None, "1.1.0", V]),
    ),
    max_size=6,
    unique_by=lambda o: o.key,
)


@given(others_st, st.floats(0, 300), st.booleans())
def test_installer_decision_properties(others: list[OtherNode], now: float, q: bool) -> None:
    d = installer_decision(others, version=V, quarantined=q, now=now, started=0.0, wait=60.0)
    states = set(d.states.values()) - {OtherState.GONE}
    if q:
        assert d.action is ROLL_BACK
    if d.action is GO:
        # Follows only a release seen healthy on another node, or when alone.
        assert not q and (OtherState.HEALTHY in states or not states)
    if d.action is ROLL_BACK and not q:
        assert OtherState.FAILED in states and OtherState.HEALTHY not in states
    if d.action is SWITCH_BACK:
        assert now >= 60.0 and states.isdisjoint({OtherState.HEALTHY, OtherState.FAILED})
    if now >= 120.0:
        assert d.action is not WAIT  # bounded


# -- reports and retention ------------------------------------------------------------


def test_rollback_notices_for_every_release_the_node_booted_and_left() -> None:
    releases = {
        "1.1.0": {"attempts": 1, "confirmed": True},
        "1.2.0": {"attempts": 2, "confirmed": False},
        "1.3.0": {"attempts": 1, "confirmed": False, "reported": True},
        "1.4.0": {"attempts": 0, "confirmed": False},
        "1.5.0": {"attempts": 3, "confirmed": False},  # not quarantined: not rolled back
    }
    quarantined = ["1.2.0", "1.3.0", "1.4.0"]
    assert rollback_notices(releases, "1.1.0", quarantined) == ["1.2.0"]
    # The release still running (nothing to go back to) is not a rollback.
    assert rollback_notices(releases, "1.2.0", quarantined) == []


def test_retention_keeps_a_good_release_other_than_current_after_a_rollback() -> None:
    # After a rollback current and previous name the same release: previous is re-armed.
    prev, keep = retention(
        ["1.0.0", "1.1.0", "1.2.0"],
        current="1.1.0",
        previous="1.1.0",
        quarantined=["1.2.0"],
        busy=[],
    )
    assert prev == "1.0.0" and keep == {"1.1.0", "1.0.0"}
    # The normal case: current and previous kept, older ones go.
    prev, keep = retention(
        ["0.9.0", "1.0.0", "1.1.0"], current="1.1.0", previous="1.0.0", quarantined=[], busy=[]
    )
    assert prev == "1.0.0" and keep == {"1.1.0", "1.0.0"}
    # Nothing else to fall back to: previous left as it is.
    prev, keep = retention(
        ["1.0.0", "1.1.0"], current="1.0.0", previous="1.0.0", quarantined=["1.1.0"], busy=[]
    )
    assert prev == "1.0.0" and keep == {"1.0.0"}


@given(
    st.sets(st.sampled_from(["1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0"]), max_size=5),
    st.data(),
)
def test_retention_properties(complete: set[str], data: st.DataObject) -> None:
    pool = sorted(complete) or ["1.0.0"]
    current = data.draw(st.sampled_from(pool))
    previous = data.draw(st.one_of(st.none(), st.sampled_from(pool)))
    quarantined = data.draw(st.sets(st.sampled_from(pool)))
    prev, keep = retention(
        complete, current=current, previous=previous, quarantined=quarantined, busy=[]
    )
    assert current in keep
    good_others = {v for v in complete if v != current and v not in quarantined}
    if good_others:
        # At least one good release other than current is kept, and previous names one.
        assert prev in good_others and prev in keep
