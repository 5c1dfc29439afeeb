"""Starting a node does not import trio.testing (and with it pytest): start-up CPU."""

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


async def test_memory_transport_still_connects() -> None:
    from p2pupdate.shell.net.transport import MemoryNetwork

    net = MemoryNetwork()
    listener = await net.transport("a").listen("a", 0)
    client = await net.transport("b").connect("a", listener.port)
    server, host = await listener.accept()
    await client.send_all(b"x")
    assert await server.receive_some(1) == b"x" and host == "b"
