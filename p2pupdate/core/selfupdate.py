"""Pure decisions of self-update: when the installing node may follow, what a node reports,
which releases an install keeps.

Nothing here touches a file, a process or a clock. The shell
(:mod:`p2pupdate.selfupdate.manager`, :mod:`p2pupdate.selfupdate.install`) reads the
install's state files, asks these functions, and carries the answer out.

* :func:`installer_decision` -- the node that switched ``current`` goes last, and only
  after another node of the install was seen healthy on the new release; a node that
  stopped being alive on it is a failure signal, and when every other node that tried it
  failed, the install goes back and the release is quarantined without the installing
  node ever running it.
* :func:`rollback_notices` -- the releases a node was rolled back from and has not said so.
* :func:`retention` -- what ``previous`` should name and which releases are kept.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from p2pupdate.core.apply import compare_versions
from p2pupdate.core.reasons import Reason

__all__ = [
    "FAILED_ON_OTHERS",
    "NOT_SEEN_HEALTHY",
    "QUARANTINED",
    "InstallerAction",
    "InstallerDecision",
    "OtherNode",
    "OtherState",
    "installer_decision",
    "other_state",
    "retention",
    "rollback_notices",
]

FAILED_ON_OTHERS = Reason.FAILED_ON_OTHERS  # every other node that tried the release died on it
QUARANTINED = Reason.QUARANTINED  # a launcher (or another node) quarantined it meanwhile
NOT_SEEN_HEALTHY = Reason.NOT_SEEN_HEALTHY  # nobody ran it healthily, nobody failed, time is up


class OtherState(enum.Enum):
    HEALTHY = "healthy"  # confirmed the new release
    RUNNING = "running"  # runs the new release, not confirmed yet
    BOOTING = "booting"  # its launcher counted a boot of it; the process is still alive
    NOT_MOVED = "not_moved"  # alive, has not tried the new release yet
    FAILED = "failed"  # counted a boot of the new release and is no longer alive
    GONE = "gone"  # not alive and never tried it (stopped): neither waits nor fails


@dataclass(frozen=True)
class OtherNode:
    """What the install's state files say about another node and the new release."""

    key: str
    attempts: int  # boots of the new release its launcher counted
    confirmed: bool  # it confirmed the new release healthy
    alive: bool  # the process of its registration is alive
    release: str | None  # the release its registration names (None: not registered)


def other_state(node: OtherNode, version: str) -> OtherState:
    if node.confirmed:
        return OtherState.HEALTHY
    if node.attempts <= 0:
        return OtherState.NOT_MOVED if node.alive else OtherState.GONE
    if not node.alive:
        # A node that stopped being alive while on the new release: a failure signal.
        # (Restarted by its supervisor, the new process is not registered yet.)
        return OtherState.FAILED
    return OtherState.RUNNING if node.release == version else OtherState.BOOTING


class InstallerAction(enum.Enum):
    WAIT = "wait"  # look again shortly
    GO = "go"  # re-exec into the new release (last)
    ROLL_BACK = "roll_back"  # quarantine the release, switch `current` back, stay
    SWITCH_BACK = "switch_back"  # switch `current` back without quarantining, stay


@dataclass(frozen=True)
class InstallerDecision:
    action: InstallerAction
    reason: str
    states: Mapping[str, OtherState]


def installer_decision(
    others: Iterable[OtherNode],
    *,
    version: str,
    quarantined: bool,
    now: float,
    started: float,
    wait: float,
) -> InstallerDecision:
    """What the node that switched ``current`` to ``version`` does now.

    ``others`` are the other nodes of the install: those alive when ``current``
    was switched, plus any whose launcher has counted a boot of ``version``.
    ``started`` is when the wait began; ``wait`` is ``self_update_wait``.

    * quarantined meanwhile: roll back (nothing to run);
    * no other node: go (alone, the launcher's boot bound is the only guard);
    * another node confirmed it: go once no other is still to move or booting,
      or when the wait is over;
    * every other node that tried it failed on it (none healthy, none still
      moving or running): roll back and quarantine, never running it;
    * the wait is over and nobody confirmed it: roll back if anyone failed on it;
      keep waiting (up to twice the wait) for nodes that run or boot it;
      otherwise switch back without quarantining (``not_seen_healthy``).
    """
    states = {o.key: other_state(o, version) for o in others}
    if quarantined:
        return InstallerDecision(InstallerAction.ROLL_BACK, QUARANTINED, states)
    considered = [s for s in states.values() if s is not OtherState.GONE]
    if not considered:
        return InstallerDecision(InstallerAction.GO, "alone", states)
    over = now - started >= wait
    healthy = OtherState.HEALTHY in considered
    failed = OtherState.FAILED in considered
    moving = any(s in (OtherState.NOT_MOVED, OtherState.BOOTING) for s in considered)
    running = any(s in (OtherState.RUNNING, OtherState.BOOTING) for s in considered)
    if healthy:
        if not moving or over:
            return InstallerDecision(InstallerAction.GO, "seen_healthy", states)
        return InstallerDecision(InstallerAction.WAIT, "others_moving", states)
    if failed and all(s is OtherState.FAILED for s in considered):
        return InstallerDecision(InstallerAction.ROLL_BACK, FAILED_ON_OTHERS, states)
    if not over:
        return InstallerDecision(InstallerAction.WAIT, "not_seen_healthy_yet", states)
    if failed:
        return InstallerDecision(InstallerAction.ROLL_BACK, FAILED_ON_OTHERS, states)
    if running and now - started < 2 * wait:
        return InstallerDecision(InstallerAction.WAIT, "others_confirming", states)
    return InstallerDecision(InstallerAction.SWITCH_BACK, NOT_SEEN_HEALTHY, states)


def rollback_notices(
    releases: Mapping[str, object], running: str, quarantined: Collection[str]
) -> list[str]:
    """Releases this node was rolled back from and has not reported yet, oldest first.

    ``releases`` is the node's boot record (release -> ``{attempts, confirmed,
    reported}``). A node was rolled back from a release when its launcher
    counted at least one boot of it, it never confirmed it, the release is
    quarantined (by whichever node or launcher), and the node now runs another.
    """
    out = []
    for version, entry in releases.items():
        if version == running or version not in quarantined or not isinstance(entry, Mapping):
            continue
        attempts = entry.get("attempts")
        if not isinstance(attempts, int) or attempts < 1:
            continue
        if entry.get("confirmed") or entry.get("reported"):
            continue
        out.append(version)
    return sorted(out)


def _newest(versions: Iterable[str]) -> str | None:
    best: str | None = None
    for v in versions:
        try:
            if best is None or compare_versions(v, best) > 0:
                best = v
        except ValueError:
            continue
    return best


def retention(
    complete: Collection[str],
    *,
    current: str | None,
    previous: str | None,
    quarantined: Collection[str],
    busy: Collection[str],
) -> tuple[str | None, set[str]]:
    """(what ``previous`` should name, the releases to keep) of an install.

    ``previous`` is the release to fall back to: a complete, not quarantined
    release other than ``current``. After a rollback it names the same release
    as ``current`` (or a quarantined one); then it is pointed at the newest
    complete, not quarantined release other than ``current``, if there is one.
    Kept: ``current``, that ``previous``, and every release a running node uses.
    """
    good = [v for v in complete if v not in quarantined and v != current]
    if previous is None or previous not in good:
        previous = _newest(good) if good else previous
    keep = set(busy)
    keep.update(v for v in (current, previous) if v is not None)
    return previous, keep
