"""One list of reason codes: short snake_case codes, details apart, old values kept."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core import apply, policy, retry, selfupdate
from p2pupdate.core.reasons import ACT_REASONS, RELAY_REASONS, Reason, split_reason


def test_codes_are_short_snake_case() -> None:
    for r in Reason:
        assert re.fullmatch(r"[a-z][a-z_]*[a-z]", r.value), r
        assert str(r) == r.value  # a member is its string in events and state files


def test_module_names_are_the_enum() -> None:
    """policy, apply, retry and selfupdate name the same codes, with their old values."""
    assert policy.REASONS == RELAY_REASONS | ACT_REASONS
    for name in ("NOT_NEWER", "QUARANTINED", "TOO_LARGE", "HASH_MISMATCH", "DISK_FULL"):
        assert getattr(apply, name) is Reason[name]
    assert apply.TOO_MANY_ATTEMPTS == "too_many_attempts"
    assert selfupdate.FAILED_ON_OTHERS is Reason.FAILED_ON_OTHERS
    assert set(retry.RETRYABLE) <= {r.value for r in Reason}


@given(code=st.sampled_from(list(Reason)), detail=st.text(max_size=20))
def test_split_reason_takes_the_code_apart(code: Reason, detail: str) -> None:
    got_code, got_detail = split_reason(f"{code}: {detail}")
    assert got_code == code and got_detail == detail.strip()
    assert split_reason(code.value) == (code.value, "")
