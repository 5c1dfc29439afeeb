"""Rollout control: the ``--stages`` and ``--abort-after`` syntax, and when a
``publish --wait`` is over.

Pure: parsing raises ValueError with a message for the user; :func:`wait_verdict`
takes each node's outcome (``core.reports.rollout_tally``) and says whether the
publisher is done waiting, whether that is a success, and the summary to print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pupdate.core.announcement import MAX_STAGES
from p2pupdate.core.units import parse_duration

__all__ = ["WaitVerdict", "parse_abort", "parse_stages", "wait_verdict"]


def _percent(text: str) -> int:
    text = text.strip().removesuffix("%")
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise ValueError(f"bad percentage {text!r} (1..100)")
    return int(text)


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """``5%:30m,25%:1h,100%`` -> ((5, 0), (25, 1800), (100, 5400)).

    Each stage is PCT[:DURATION]: the percentage holds for DURATION, then the next
    opens; the last needs no duration. The result is (percent, seconds after the
    announcement's ``created`` the stage opens).
    """
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts) or len(parts) > MAX_STAGES:
        raise ValueError(f"--stages: 1..{MAX_STAGES} stages like 5%:30m,25%:1h,100%")
    out: list[tuple[int, int]] = []
    offset = 0
    for i, part in enumerate(parts):
        pct_text, _, dur_text = part.partition(":")
        pct = _percent(pct_text)
        if out and pct < out[-1][0]:
            raise ValueError("--stages: percentages must not shrink")
        out.append((pct, offset))
        if dur_text:
            seconds = int(parse_duration(dur_text))
            if seconds <= 0:
                raise ValueError("--stages: a stage lasts more than 0 s")
            offset += seconds
        elif i != len(parts) - 1:
            raise ValueError(f"--stages: stage {part!r} needs a duration (PCT:DURATION)")
    return tuple(out)


def parse_abort(text: str) -> tuple[int, int]:
    """``30:3`` -> (30, 3); ``30`` -> (30, 1)."""
    pct_text, _, min_text = text.partition(":")
    pct = _percent(pct_text)
    minimum = 1
    if min_text:
        if not min_text.strip().isdigit() or not 1 <= int(min_text) <= 1_000_000:
            raise ValueError(f"--abort-after: bad minimum {min_text!r} (1..1000000)")
        minimum = int(min_text)
    return pct, minimum


_FAILED = ("failed", "refused", "aborted")


@dataclass(frozen=True)
class WaitVerdict:
    finished: bool
    ok: bool
    counts: dict[str, int] = field(default_factory=dict)
    summary: str = ""


def wait_verdict(
    tally: Mapping[bytes, tuple[str, str, str]],
    *,
    goal: str,
    percent: float,
    aborted: bool = False,
) -> WaitVerdict:
    """Is a ``publish --wait GOAL`` over, and did it succeed?

    ``tally``: node id -> (outcome, reason, label) for the nodes in the rollout
    (``core.reports.node_outcome``). Success: at least ``percent`` of them reached
    ``goal`` (``applied``; or ``downloaded``, which applied also satisfies) and none
    failed, refused or aborted. Failure as soon as every node has settled with any
    failure, or the rollout aborted. Not finished while nothing reported.
    """
    counts: dict[str, int] = {}
    for outcome, _, _ in tally.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    reached = counts.get("applied", 0)
    if goal == "downloaded":
        reached += counts.get("downloaded", 0)
    failures = sum(counts.get(k, 0) for k in _FAILED)
    total = len(tally)
    settled_kinds = {"applied", *_FAILED} | ({"downloaded"} if goal == "downloaded" else set())
    settled = sum(counts.get(k, 0) for k in settled_kinds)
    summary = _summary(tally, total, goal)
    if total == 0:
        return WaitVerdict(False, False, counts, summary)
    if aborted or (failures and settled == total):
        return WaitVerdict(True, False, counts, summary)
    if not failures and reached * 100 >= percent * total:
        return WaitVerdict(True, True, counts, summary)
    return WaitVerdict(False, False, counts, summary)


def _summary(tally: Mapping[bytes, tuple[str, str, str]], total: int, goal: str) -> str:
    """ "7 of 10 applied; 3 refused: untrusted; 1 rolled_back: health_check exit 3 on n07"."""
    reached = sum(
        1
        for o, _, _ in tally.values()
        if o == "applied" or (goal == "downloaded" and o == "downloaded")
    )
    groups: dict[tuple[str, str], list[str]] = {}
    for outcome, reason, label in sorted(tally.values(), key=lambda t: t[2]):
        if outcome in _FAILED:
            groups.setdefault((outcome, reason), []).append(label)
    parts = [f"{reached} of {total} {goal}"]
    for (outcome, reason), labels in sorted(groups.items()):
        where = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        text = f"{len(labels)} {outcome}"
        if reason:
            text += f": {reason}"
        parts.append(f"{text} on {where}")
    return "; ".join(parts)
