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


# ---------------------------------------------------------------- the layers
#
# Each module belongs to a layer; it may import from its own package (a folder) and
# from layers below its own, never from its own layer's other packages or from above.
# So the tree shows the architecture and no arrow runs back up:
#   base (config, errors) < core < shell base < shell.net < shell.transfer, shell.install
#   < shell wiring (agent, nodeconfig) < selfupdate < commands, sim < cli

PACKAGE_DIR = CORE_DIR.parent
LAYERS: dict[str, int] = {
    "p2pupdate": 0,  # __init__: the version only
    "p2pupdate.config": 0,
    "p2pupdate.errors": 0,
    "p2pupdate.core": 1,
    "p2pupdate.shell": 2,  # the shell's base modules (files, events, control socket, ...)
    "p2pupdate.shell.net": 3,
    "p2pupdate.shell.transfer": 4,
    "p2pupdate.shell.install": 4,
    "p2pupdate.shell.agent": 5,
    "p2pupdate.shell.nodeconfig": 5,
    "p2pupdate.selfupdate": 6,
    "p2pupdate.commands": 7,
    "p2pupdate.sim": 7,
    "p2pupdate.cli": 8,
    "p2pupdate.__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of(module: str) -> tuple[str, int]:
    """The most specific entry of LAYERS that ``module`` falls under: (its key, rank)."""
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return best, LAYERS[best]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "p2pupdate":
                # `from p2pupdate.shell import events` imports p2pupdate.shell.events.
                found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "p2pupdate"}
    return found


def _target_module(name: str) -> str:
    """``p2pupdate.shell.net.node.Node`` -> the module ``p2pupdate.shell.net.node``."""
    parts = name.split(".")
    while parts:
        candidate = PACKAGE_DIR.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


ALL_MODULES = sorted(PACKAGE_DIR.rglob("*.py"))


def layer_violations(me: str, imports: set[str]) -> list[str]:
    """Every import of module ``me`` that goes sideways or up the layers."""
    my_key, my_rank = _layer_of(me)
    bad = []
    for name in sorted(imports):
        target = _target_module(name)
        key, rank = _layer_of(target)
        if key != my_key and rank >= my_rank:
            bad.append(f"{me} ({my_key}) imports {target} ({key})")
    return bad


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_imports_only_go_down_the_layers(path: Path) -> None:
    assert layer_violations(_module_name(path), _imports(path)) == []


def test_layer_check_catches_arrows_up_and_sideways() -> None:
    assert _target_module("p2pupdate.shell.net.node.Node") == "p2pupdate.shell.net.node"
    # shell importing selfupdate (the old cycle), and core importing the shell: up.
    assert layer_violations("p2pupdate.shell.agent", {"p2pupdate.selfupdate.manager"})
    assert layer_violations("p2pupdate.core.policy", {"p2pupdate.shell.fsutil"})
    # Two packages of one layer must not lean on each other: sideways.
    assert layer_violations("p2pupdate.shell.install.targets", {"p2pupdate.shell.transfer.store"})
    assert layer_violations("p2pupdate.sim.harness", {"p2pupdate.commands.nodecmd"})
    # Down, or inside one's own package: fine.
    assert not layer_violations("p2pupdate.commands.nodecmd", {"p2pupdate.selfupdate.manager"})
    assert not layer_violations("p2pupdate.shell.net.node", {"p2pupdate.shell.net.peer.Connection"})


# ---------------------------------------------------------------- no module cycles
#
# Inside one package too, imports run one way: two modules that import each other
# (even only for type checking, under TYPE_CHECKING) are one concern cut in two, or
# need a small protocol between them (as shell.net.host is for reports and yanks).


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of ``graph`` (module -> modules it imports), each once, as a path."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                cycle = path[path.index(nxt) :]
                if min(cycle) == nxt:  # report each cycle once, from its smallest module
                    cycles.append([*cycle, nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt], on_path | {nxt})
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start})
    return cycles


def _module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ALL_MODULES:
        me = _module_name(path)
        targets = {_target_module(name) for name in _imports(path)}
        graph[me] = {t for t in targets if t != me}
    return graph


def test_no_module_imports_itself_back() -> None:
    assert import_cycles(_module_graph()) == []


def test_cycle_check_catches_a_type_checking_circle() -> None:
    # The old shape: the node imported its report gossip, which imported the node back.
    graph = {
        "p2pupdate.shell.net.node": {"p2pupdate.shell.net.reports"},
        "p2pupdate.shell.net.reports": {"p2pupdate.shell.net.node", "p2pupdate.core.reports"},
        "p2pupdate.core.reports": set(),
    }
    assert import_cycles(graph) == [
        ["p2pupdate.shell.net.node", "p2pupdate.shell.net.reports", "p2pupdate.shell.net.node"]
    ]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
