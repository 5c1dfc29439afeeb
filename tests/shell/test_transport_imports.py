"""Starting a node or a publish imports only what it uses: start-up CPU (and the time
from ``publish`` to the first node holding the announcement)."""

from __future__ import annotations

import subprocess
import sys


def test_node_command_imports_neither_trio_testing_nor_pytest() -> None:
    code = (
        "import sys, p2pupdate.cli, p2pupdate.commands.nodecmd\n"
        "print(sorted(m for m in ('trio.testing', 'pytest') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_publish_imports_no_tls_library_no_applicator_and_no_test_tools() -> None:
    # cryptography is needed only to make a TLS certificate (--encrypt), the applicator
    # only by a node with targets; together ~60 ms of every publish's start.
    unwanted = ("trio.testing", "pytest", "cryptography", "p2pupdate.shell.install.applicator")
    code = (
        "import sys, p2pupdate.cli, p2pupdate.commands.publish\n"
        f"print(sorted(m for m in {unwanted!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_memory_transport_still_connects() -> None:
    from p2pupdate.shell.net.transport import MemoryNetwork

    net = MemoryNetwork()
    listener = await net.transport("a").listen("a", 0)
    client = await net.transport("b").connect("a", listener.port)
    server, host = await listener.accept()
    await client.send_all(b"x")
    assert await server.receive_some(1) == b"x" and host == "b"
