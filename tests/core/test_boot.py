"""The launcher's boot decisions (p2pupdate/core/boot.py): the table, crash loops, the
quarantine store, and that the module stays copyable (stdlib only, no p2pupdate import)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core import boot
from p2pupdate.core.boot import BootCount, BootEntry, BootRollBack, BootStart
from p2pupdate.selfupdate import launcher

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_boot_decision_table() -> None:
    assert boot.boot_decision(BootEntry(), 3, True) == BootCount(1)
    assert boot.boot_decision(BootEntry(attempts=2), 3, True) == BootCount(3)
    assert boot.boot_decision(BootEntry(attempts=3), 3, True) == BootRollBack(restore=True)
    assert boot.boot_decision(BootEntry(attempts=5), 3, False) == BootRollBack(restore=False)
    assert boot.boot_decision(BootEntry(attempts=9, confirmed=True), 3, True) == BootStart()
    assert boot.boot_decision(BootEntry(attempts=9, gave_up=True), 3, True) == BootStart()
    with pytest.raises(ValueError):
        boot.boot_decision(BootEntry(), 0, True)


@given(bound=st.integers(1, 8), confirm_at=st.none() | st.integers(1, 10))
def test_crash_loop_rolls_back_exactly_past_the_bound(bound: int, confirm_at: int | None) -> None:
    """Boot over and over (crashing each time) until confirmed or rolled back."""
    record: dict[str, Any] = {"releases": {}}
    boots = 0
    outcome = None
    while outcome is None:
        d = boot.boot_decision(boot.boot_entry(record, "2.0.0"), bound, True)
        if isinstance(d, BootRollBack):
            outcome = "rolled_back"
            break
        if isinstance(d, BootStart):
            outcome = "confirmed"
            break
        assert d.attempt == boots + 1 <= bound  # persisted before running
        record["releases"]["2.0.0"] = {"attempts": d.attempt, "confirmed": False}
        boots += 1
        if confirm_at is not None and boots == confirm_at:
            record["releases"]["2.0.0"]["confirmed"] = True  # healthy: the node confirms
    if confirm_at is not None and confirm_at <= bound:
        assert outcome == "confirmed" and boots == confirm_at
    else:
        assert outcome == "rolled_back" and boots == bound


@given(record=json_values, release=st.text(max_size=8))
def test_any_boot_record_is_read_without_error(record: object, release: str) -> None:
    """A boot record is read as if it came from the network: garbage counts as never booted."""
    obj = record if isinstance(record, dict) else {"releases": record}
    entry = boot.boot_entry(obj, release)
    assert entry.attempts >= 0
    assert boot.boot_bound(obj) >= 1
    assert isinstance(
        boot.boot_decision(entry, boot.boot_bound(obj), False), BootCount | BootRollBack | BootStart
    )


def test_boot_entry_ignores_wrong_types() -> None:
    rec = {"releases": {"1.0.0": {"attempts": True, "confirmed": 1}}, "bound": 0}
    assert boot.boot_entry(rec, "1.0.0") == BootEntry()
    assert boot.boot_bound(rec) == boot.DEFAULT_BOUND
    assert boot.boot_entry({"releases": {"1.0.0": {"attempts": 2}}}, "1.0.0").attempts == 2


def test_previous_is_good_and_choose_release() -> None:
    assert boot.previous_is_good("2", "1", True, [])
    assert not boot.previous_is_good("2", None, True, [])
    assert not boot.previous_is_good("2", "2", True, [])
    assert not boot.previous_is_good("2", "1", False, [])
    assert not boot.previous_is_good("2", "1", True, ["1"])
    assert boot.choose_release("2", True, "1", True) == "2"
    assert boot.choose_release("2", False, "1", True) == "1"
    assert boot.choose_release(None, False, "1", True) == "1"
    assert boot.choose_release("2", False, "1", False) is None


@given(obj=json_values, version=st.text(min_size=1, max_size=8))
def test_quarantine_store_add_then_remove(obj: object, version: str) -> None:
    before = [e["version"] for e in boot.quarantine_entries(obj)]
    added = boot.add_quarantine(obj, version, boot.TOO_MANY_ATTEMPTS, "k", 1.0)
    if version in before:
        assert added is None
        return
    assert added is not None
    assert [e["version"] for e in boot.quarantine_entries(added)] == [*before, version]
    assert boot.add_quarantine(added, version, "x", "k", 2.0) is None
    removed = boot.remove_quarantine(json.loads(json.dumps(added)), version)
    assert removed is not None
    assert version not in [e["version"] for e in boot.quarantine_entries(removed)]
    assert boot.remove_quarantine(removed, version) is None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_boot_module_is_stdlib_only() -> None:
    """The launcher copies core/boot.py into the install: it may import only the stdlib."""
    names = _imports(Path(boot.__file__))
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names) | {"__future__"}


def test_launcher_module_imports_only_stdlib_and_boot() -> None:
    names = _imports(Path(launcher.__file__))
    outside = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"__future__", "p2pupdate.core", launcher.BOOT_MODULE}
