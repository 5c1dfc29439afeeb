"""What `status` says about refusals: only while they still matter."""

from __future__ import annotations

from p2pupdate.shell.agent.control import _relevant_refusal


def test_a_refusal_of_a_version_the_target_has_reached_is_history() -> None:
    old = {"version": "1.1.0", "reason": "not_newer"}
    assert _relevant_refusal(old, "1.2.0") is None
    assert _relevant_refusal({"version": "1.2.0", "reason": "untrusted"}, "1.2.0") is None


def test_a_refusal_of_a_newer_version_stays() -> None:
    newer = {"version": "2.0.0", "reason": "untrusted"}
    assert _relevant_refusal(newer, "1.2.0") == newer
    assert _relevant_refusal(newer, None) == newer  # nothing known installed
    assert _relevant_refusal(newer, "hand-written") == newer  # not semver: unknown
    assert _relevant_refusal(None, "1.0.0") is None
