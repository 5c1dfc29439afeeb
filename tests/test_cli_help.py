"""The command line teaches itself: every flag has help, defaults are said, examples given."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pupdate.cli import build_parser, main
from p2pupdate.sim.cli import list_scenarios
from p2pupdate.sim.scenario import shipped_scenarios


def _parsers(
    parser: argparse.ArgumentParser, path: str = "p2pupdate"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, f"{path} {name}")
    return out


ALL = _parsers(build_parser())


@pytest.mark.parametrize("path,parser", ALL, ids=[p for p, _ in ALL])
def test_every_option_and_argument_has_help(path: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{path}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("path,parser", ALL, ids=[p for p, _ in ALL])
def test_an_option_with_a_default_says_it(path: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            continue
        assert "default" in (action.help or ""), f"{path} {action.option_strings}: no default"


@pytest.mark.parametrize("command", ["node", "publish", "status", "sim", "keygen"])
def test_main_commands_have_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"p2pupdate {command}" in out.split("example:")[1]


def test_sim_list_names_every_shipped_scenario_on_one_line_each() -> None:
    lines = list_scenarios().splitlines()
    assert [line.split()[0] for line in lines] == shipped_scenarios()
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # each has a description


def test_sim_list_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--list"]) == 0
    assert "ten-nodes" in capsys.readouterr().out


def _node(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pupdate", "node", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_config_accepts_a_valid_config_and_starts_nothing(tmp_path: Path) -> None:
    key = "ed25519:" + "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "data"\nlisten = "127.0.0.1:0"\ntrust = ["{key}"]\n'
        '[targets."app/stable"]\npath = "app"\n'
    )
    proc = _node("--config", str(config), "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config OK: ") and "app/stable=" in proc.stdout
    assert not (tmp_path / "data" / "node.key").exists()  # no identity made, nothing run


def test_check_config_refuses_a_bad_config_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('listen = "127.0.0.1:0"\nmax_conections = 3\n')
    proc = _node("--config", str(config), "--check-config")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "did you mean 'max_connections'" in proc.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_code_for_each_shell(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    code = capsys.readouterr().out
    assert "p2pupdate" in code and "_ARGCOMPLETE" in code


def test_completion_answers_from_the_real_parser(tmp_path: Path) -> None:
    # What the shell code does: run the program with the line typed so far.
    out = tmp_path / "candidates"
    line = "p2pupdate quarantine "
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "p2pupdate"], env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert set(out.read_text().split()) == {"clear", "list", "-h", "--help"}


def test_manpage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manpage"]) == 0
    page = capsys.readouterr().out
    assert page.startswith(".TH P2PUPDATE")
    for command in ("keygen", "node", "publish", "status", "versions", "sim", "completion"):
        assert command in page
