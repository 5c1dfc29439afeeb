"""Finding and reading scenario files, and typed access to their tables.

A name without a slash or ``.toml`` is looked up among the scenarios shipped
inside this package (``p2pupdate/sim/scenarios/NAME.toml``); anything else is a
path. ``base = "NAME"`` chains are resolved here (tables merged key by key).
:class:`TableReader` reads one table's values with their types and ranges and
names the scenario and the key in every :class:`UsageError`.
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pupdate.core.units import parse_rate, parse_size
from p2pupdate.errors import UsageError

__all__ = ["TableReader", "merge_tables", "resolve_scenario", "shipped_scenarios"]

_SHIPPED_PACKAGE = "p2pupdate.sim"
_SHIPPED_DIR = "scenarios"


# -- finding scenarios --------------------------------------------------------------


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped inside the package, sorted."""
    root = importlib.resources.files(_SHIPPED_PACKAGE).joinpath(_SHIPPED_DIR)
    return sorted(
        p.name.removesuffix(".toml")
        for p in root.iterdir()
        if p.name.endswith(".toml") and p.is_file()
    )


def _looks_like_path(arg: str) -> bool:
    return arg.endswith(".toml") or "/" in arg or arg.startswith(".")


def _read_shipped(name: str) -> tuple[str, str]:
    res = importlib.resources.files(_SHIPPED_PACKAGE).joinpath(_SHIPPED_DIR, f"{name}.toml")
    if not res.is_file():
        raise UsageError(
            f"unknown scenario {name!r} (shipped: {', '.join(shipped_scenarios())}; "
            "or give the path of a .toml file)"
        )
    return res.read_text(encoding="utf-8"), f"{name} (shipped)"


def _read_path(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"scenario file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"scenario file {path} is a directory") from None
    except UnicodeDecodeError:
        raise UsageError(f"scenario file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read scenario file {path}: {exc.strerror}") from None


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"scenario {where}: not valid TOML: {exc}") from None


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _load_raw(
    arg: str, relative_to: Path | None, seen: tuple[str, ...]
) -> tuple[dict[str, Any], str]:
    """The merged raw table of a scenario (its ``base`` chain resolved) and its name."""
    if _looks_like_path(arg):
        path = Path(arg)
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        key = str(path.resolve())
        text, where, name, here = _read_path(path), str(path), path.stem, path.parent
    else:
        key = f"shipped:{arg}"
        text, where = _read_shipped(arg)
        name, here = arg, None
    if key in seen:
        raise UsageError(f"scenario {where}: 'base' chain loops back to itself")
    raw = _parse_toml(text, where)
    base = raw.pop("base", None)
    if base is None:
        return raw, name
    if not isinstance(base, str) or not base:
        raise UsageError(f"scenario {where}: 'base' must be a scenario name or path")
    base_raw, _ = _load_raw(base, here, (*seen, key))
    return merge_tables(base_raw, raw), name


def resolve_scenario(arg: str) -> tuple[dict[str, Any], str, str]:
    """Raw merged table, scenario name and a description of where it came from."""
    raw, name = _load_raw(arg, None, ())
    where = arg if _looks_like_path(arg) else f"{arg} (shipped)"
    return raw, name, where


# -- validation ----------------------------------------------------------------------


class TableReader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table = table
        self.where = where
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> UsageError:
        return UsageError(f"scenario {self.where}: {key}: {message}")

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.table.get(key)

    def has(self, key: str) -> bool:
        return key in self.table

    def int_(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(key, f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"must be in {lo}..{hi}, got {v}")
        return v

    def float_(
        self, key: str, default: float | None, lo: float, hi: float = math.inf
    ) -> float | None:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.fail(key, f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"must be in {lo}..{hi}, got {v}")
        return float(v)

    def bool_(self, key: str, default: bool | None) -> bool | None:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v

    def str_(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def size(self, key: str, default: int, *, rate: bool = False) -> int:
        v = self.get(key)
        if v is None:
            return default
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 0:
                raise self.fail(key, "must not be negative")
            return v
        if not isinstance(v, str):
            raise self.fail(key, f"expected a number or a string like '32MiB', got {v!r}")
        try:
            return parse_rate(v) if rate else parse_size(v)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise UsageError(f"scenario {self.where}: unknown key(s): {', '.join(unknown)}")
