"""``p2pupdate completion SHELL`` and ``p2pupdate manpage``: what a shell and ``man`` need.

Both come from the argparse parser itself, through well-kept libraries, so they never
drift from the real command line: argcomplete for bash, zsh and fish completion (the
shell code it prints asks ``p2pupdate`` itself for candidates; ``cli.main`` answers
those requests before parsing), and argparse-manpage for a roff manual page.

Install completion with, for example::

    p2pupdate completion bash > /etc/bash_completion.d/p2pupdate
    p2pupdate completion zsh > "${fpath[1]}/_p2pupdate"
    p2pupdate completion fish > ~/.config/fish/completions/p2pupdate.fish

and the manual page with ``p2pupdate manpage > /usr/local/share/man/man1/p2pupdate.1``.
"""

from __future__ import annotations

import argparse
import datetime
import os

from argcomplete.shell_integration import shellcode
from argparse_manpage.manpage import Manpage

from p2pupdate import __version__

__all__ = ["SHELLS", "completion_script", "manpage"]

SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The completion code for ``shell`` (one of :data:`SHELLS`)."""
    return str(shellcode(["p2pupdate"], shell=shell))


def manpage(parser: argparse.ArgumentParser) -> str:
    """The roff manual page of ``parser``; dated by SOURCE_DATE_EPOCH when set (builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    day = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch.isdigit()
        else datetime.datetime.now(datetime.UTC)
    )
    parser.prog = "p2pupdate"
    page = Manpage(
        parser,
        _data={
            "project_name": "p2pupdate",
            "version": __version__,
            "date": day.strftime("%Y-%m-%d"),
            "description": "peer-to-peer update distribution",
            "url": "https://github.com/p2pupdate/p2pupdate",
        },
    )
    return str(page)
