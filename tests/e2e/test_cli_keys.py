"""`p2pupdate keygen`, `pubkey` and `--version` as real subprocesses."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import p2pupdate
from p2pupdate.core.keys import SECRET_HEADER, parse_pubkey


def _command() -> list[str]:
    script = Path(sys.executable).with_name("p2pupdate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "p2pupdate"]  # pragma: no cover - not installed as a script


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("p2pupdate: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_keygen_writes_private_file_and_prints_pubkey(tmp_path: Path) -> None:
    key = tmp_path / "authority.key"
    result = run("keygen", "--out", key)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout.endswith("\n")
    pub = parse_pubkey(lines[0])
    assert lines[0] == "ed25519:" + pub.hex()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith(SECRET_HEADER + "\n")

    again = run("pubkey", key)
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key = tmp_path / "k"
    first = run("keygen", "--out", key)
    before = key.read_bytes()
    refused = run("keygen", "--out", key)
    assert_usage_error(refused, "already exists", "--force")
    assert key.read_bytes() == before

    forced = run("keygen", "--out", key, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout != first.stdout
    assert key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert run("pubkey", key).stdout == forced.stdout


def test_keygen_into_missing_directory(tmp_path: Path) -> None:
    assert_usage_error(run("keygen", "--out", tmp_path / "no" / "k"), "does not exist")


def test_keygen_without_out_is_a_usage_error() -> None:
    assert_usage_error(run("keygen"), "--out")


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"p2pupdate {p2pupdate.__version__}")
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "does not exist"),
        ("directory", "not a regular file"),
        ("wrong_length", "wrong length"),
        ("not_a_key", "not a p2pupdate secret key"),
        ("mode_0644", "readable by group or others"),
    ],
)
def test_pubkey_bad_key_file(tmp_path: Path, setup: str, needle: str) -> None:
    path = tmp_path / "k"
    if setup == "directory":
        path.mkdir()
    elif setup == "wrong_length":
        path.write_text(f"{SECRET_HEADER}\n{'ab' * 20}\n")
        path.chmod(0o600)
    elif setup == "not_a_key":
        path.write_bytes(b"\x00\x01 not a key")
        path.chmod(0o600)
    elif setup == "mode_0644":
        assert run("keygen", "--out", path).returncode == 0
        path.chmod(0o644)
    assert_usage_error(run("pubkey", path), needle)
