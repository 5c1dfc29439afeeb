"""Sizes, rates and durations as users type them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core.units import format_size, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("512kib", 512 * 1024),
        ("1GiB", 2**30),
        ("1.5GiB", 3 * 2**29),
        ("1.1GiB", 1181116006),  # exact, not float-rounded
        ("10MB", 10_000_000),
        ("10M", 10_000_000),
        ("2k", 2000),
        ("7b", 7),
        ("3TiB", 3 * 2**40),
        (" 4 MiB ", 4 * 2**20),
        ("99999999999999999999", 99999999999999999999),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "MiB", "-1", "1 GiBB", "1.2.3", "1e9", "ten", "1 PiB", "0x10", "1/s", "\u0661\u0662"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10MiB/s", 10 * 2**20),
        ("512KiB/s", 512 * 1024),
        ("512KiB", 512 * 1024),
        ("1000", 1000),
        ("0", 0),
        ("unlimited", 0),
        ("None", 0),
        ("1.5MB/s", 1_500_000),
    ],
)
def test_parse_rate(text: str, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "10MiB/h", "-5/s", "/s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("30d", 30 * 86400), ("12h", 43200), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("7", 7)],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "0", "0s", "d", "1w", "-1d", "1 day", "1d2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (32 * 2**20, "32.0 MiB"),
        (5 * 2**40, "5120.0 GiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(0, 2**50))
def test_plain_byte_counts_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_rate(f"{n}/s") == n


@given(st.text(max_size=20))
def test_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_size, parse_rate, parse_duration):
        with contextlib.suppress(ValueError):
            parse(text)
