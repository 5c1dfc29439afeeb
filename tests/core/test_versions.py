"""One versions module: every decision orders versions the same way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core import apply, policy, versions
from p2pupdate.core.versions import compare_versions, is_newer, normalize_version, parse_version


def _semver(a: int, b: int, c: int, pre: str, build: str) -> str:
    return f"{a}.{b}.{c}" + (f"-{pre}" if pre else "") + (f"+{build}" if build else "")


SEMVER = st.builds(
    _semver,
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.sampled_from(["", "rc.1", "alpha", "beta.2"]),
    st.sampled_from(["", "b7", "exp.sha.5114f85"]),
)


def test_the_act_gate_and_the_applicator_use_the_same_functions() -> None:
    assert policy.is_newer is apply.is_newer is versions.is_newer
    assert apply.parse_version is versions.parse_version


def test_a_non_semver_installed_version_is_unknown_everywhere() -> None:
    # Used to raise in the act gate and return True in the applicator.
    assert policy.is_newer("1.0.0", "build-2024-01") is True
    assert apply.is_newer("1.0.0", "build-2024-01") is True
    assert is_newer("1.0.0", None) is True


@given(SEMVER, SEMVER)
def test_is_newer_is_strict_precedence_ignoring_build(a: str, b: str) -> None:
    assert is_newer(a, b) == (compare_versions(a, b) > 0)
    assert not (is_newer(a, b) and is_newer(b, a))
    assert not is_newer(a, a.split("+")[0] + "+other")


@given(SEMVER)
def test_normalize_drops_build_metadata_only(v: str) -> None:
    assert normalize_version(v) == v.split("+")[0]


def test_limits_and_garbage() -> None:
    with pytest.raises(ValueError):
        parse_version("1." + "1" * 70 + ".0")
    with pytest.raises(ValueError):
        parse_version("not a version")
