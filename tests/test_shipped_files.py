"""The service files shipped in the package: a valid unit, a complete example config."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from p2pupdate.cli import build_parser
from p2pupdate.shell.nodeconfig import CONFIG_KEYS, TARGET_KEYS, load_settings

DATA = files("p2pupdate").joinpath("data")


def _text(name: str) -> str:
    return DATA.joinpath(name).read_text(encoding="utf-8")


def test_example_config_names_every_key() -> None:
    text = _text("node.example.toml")
    named = set(re.findall(r"^#? ?([a-z_]+) = ", text, re.MULTILINE))
    missing = ((CONFIG_KEYS - {"targets"}) | (TARGET_KEYS - {"channel"})) - named
    assert '[targets."app/stable"]' in text
    assert not missing, f"node.example.toml does not mention {sorted(missing)}"


def test_example_config_is_valid_as_shipped(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    # The example's target lives under /opt, which a test machine may not have.
    (tmp_path / "bin").mkdir()
    config.write_text(_text("node.example.toml").replace("/opt/app/bin/", f"{tmp_path}/bin/"))
    args = build_parser().parse_args(
        ["node", "--config", str(config), "--data-dir", str(tmp_path / "d")]
    )
    settings = load_settings(args)
    assert settings.listen == ("0.0.0.0", 7400)
    assert [t.channel for t in settings.targets] == ["app/stable"]
    assert isinstance(args, argparse.Namespace)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # Point ExecStart at this interpreter's p2pupdate: verify checks the binary exists.
    exe = Path(sys.executable).with_name("p2pupdate")
    unit = tmp_path / "p2pupdate.service"
    unit.write_text(_text("p2pupdate.service").replace("/usr/local/bin/p2pupdate", str(exe)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_systemd_unit_is_hardened_and_notifies() -> None:
    unit = _text("p2pupdate.service")
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=p2pupdate",
        "RestartForceExitStatus=3",
    ):
        assert line in unit


def test_logrotate_snippet_names_the_events_file_of_the_example_config() -> None:
    rotate = _text("p2pupdate.logrotate")
    events = re.search(r'^# events = "([^"]+)"', _text("node.example.toml"), re.MULTILINE)
    assert events is not None and rotate.count(events.group(1)) == 1
    assert "copytruncate" in rotate
