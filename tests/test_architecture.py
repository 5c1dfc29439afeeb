"""The pure core stays pure: no I/O, clock, threads or event loop under p2pupdate/core.

Walks the AST of every module in the package (so a lazy import inside a function is caught
too) and fails on an import of a forbidden module or a call of open().
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pupdate.core

FORBIDDEN = frozenset(
    {"trio", "socket", "os", "pathlib", "time", "subprocess", "asyncio", "threading"}
)
CORE_DIR = Path(p2pupdate.core.__file__).parent
CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))


def violations(source: str) -> list[str]:
    """Every forbidden import or open() call in ``source``, as 'line: what'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN:
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] in FORBIDDEN:
                found.append(f"{node.lineno}: from {module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("open", "__import__"):
                found.append(f"{node.lineno}: {func.id}()")
            elif isinstance(func, ast.Attribute) and func.attr == "open":
                if isinstance(func.value, ast.Name) and func.value.id in ("io", "builtins"):
                    found.append(f"{node.lineno}: {func.value.id}.open()")
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "import_module"
                and isinstance(func.value, ast.Name)
                and func.value.id == "importlib"
            ):
                found.append(f"{node.lineno}: importlib.import_module()")
    return found


def test_core_modules_found() -> None:
    names = {p.name for p in CORE_MODULES}
    assert {"chunks.py", "announcement.py", "policy.py", "codec.py", "messages.py"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(CORE_DIR)))
def test_core_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import trio, msgpack",
        "from pathlib import Path",
        "from time import monotonic",
        "from asyncio import sleep",
        "import subprocess as sp",
        "import threading",
        "import socket",
        "def f():\n    import trio\n",
        "def f(p):\n    return open(p).read()\n",
        "import io\nio.open('x')",
        "import builtins\nbuiltins.open('x')",
        "__import__('os')",
        "import importlib\nimportlib.import_module('os')",
    ],
)
def test_checker_catches(source: str) -> None:
    assert violations(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import msgpack",
        "from random import Random",
        "from p2pupdate.core.chunks import hash_chunk",
        "from . import chunks",
        "import osmosis",
        "f.open()",  # a method called open on some object is not the builtin
        "x = 'import os'",
    ],
)
def test_checker_allows(source: str) -> None:
    assert violations(source) == []
