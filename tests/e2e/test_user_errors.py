"""Every user mistake ends with exit code 2 and one clear line on stderr, never a traceback.

One test per mistake, named after it, each running the real ``p2pupdate``
command in a subprocess. Files that cannot be read are made with a directory
where a file is expected (tests may run as root, where chmod cannot make a
file unreadable).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import Authority, CliResult, StartNode, run_cli

__all__: list[str] = []


def assert_usage_error(res: CliResult, *words: str) -> str:
    """Exit code 2, exactly one line on stderr naming the problem, no traceback."""
    assert res.rc == 2, (res.rc, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr_lines) == 1, res.stderr
    line = res.stderr_lines[0]
    assert line.startswith("p2pupdate: error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "pkg"
    path.write_bytes(b"#!/bin/sh\necho 2.0.0\n")
    return path


def publish(key: Path, package: Path, *extra: str, version: str = "2.0.0") -> CliResult:
    return run_cli(
        "publish",
        "--key",
        key,
        "--channel",
        "app/stable",
        "--version",
        version,
        "--file",
        package,
        "--peer",
        "127.0.0.1:9",
        "--timeout",
        "5",
        *extra,
    )


def node(tmp_path: Path, *args: str, trust: str | None = None) -> CliResult:
    """``p2pupdate node`` with a data dir and listen address (overridable in ``args``)."""
    argv: list[str | Path] = ["node"]
    if "--data-dir" not in args:
        argv += ["--data-dir", tmp_path / "data"]
    if "--listen" not in args:
        argv += ["--listen", "127.0.0.1:0"]
    if trust is not None:
        argv += ["--trust", trust]
    return run_cli(*argv, *args)


# ---------------------------------------------------------------- keys


def test_missing_key_file(tmp_path: Path, package: Path) -> None:
    assert_usage_error(publish(tmp_path / "nope.key", package), "nope.key", "does not exist")


def test_bad_key_file(tmp_path: Path, package: Path) -> None:
    key = tmp_path / "bad.key"
    key.write_text("this is not a key\n")
    key.chmod(0o600)
    assert_usage_error(publish(key, package), "bad.key")


def test_key_file_readable_by_others(authority: Authority, package: Path) -> None:
    authority.key.chmod(0o644)
    line = assert_usage_error(publish(authority.key, package), "readable by group or others")
    assert "chmod 600" in line


# ---------------------------------------------------------------- publish arguments


def test_bad_version_string(authority: Authority, package: Path) -> None:
    assert_usage_error(publish(authority.key, package, version="1.x"), "1.x")


def test_bad_min_version_string(authority: Authority, package: Path) -> None:
    assert_usage_error(publish(authority.key, package, "--min-version", "latest"), "latest")


def test_missing_package(authority: Authority, tmp_path: Path) -> None:
    assert_usage_error(publish(authority.key, tmp_path / "gone.tar"), "gone.tar", "does not exist")


def test_unreadable_package(authority: Authority, tmp_path: Path) -> None:
    # A FIFO where the package file should be: not a package, even as root (a directory
    # is one now: publish packs it, see test_pack.py).
    os.mkfifo(tmp_path / "pkgfifo")
    assert_usage_error(
        publish(authority.key, tmp_path / "pkgfifo"), "pkgfifo", "not a regular file"
    )


def test_bad_peer_address_for_publish(authority: Authority, package: Path) -> None:
    res = run_cli(
        "publish",
        "--key",
        authority.key,
        "--channel",
        "app/stable",
        "--version",
        "2.0.0",
        "--file",
        package,
        "--peer",
        "nonsense",
    )
    assert_usage_error(res, "nonsense", "HOST:PORT")


def test_peer_port_zero_for_publish(authority: Authority, package: Path) -> None:
    res = run_cli(
        "publish", "--key", authority.key, "--channel", "app/stable", "--version", "2.0.0",
        "--file", package, "--peer", "127.0.0.1:0",
    )  # fmt: skip
    assert_usage_error(res, "127.0.0.1:0", "port 0")


def test_bad_duration_for_expires(authority: Authority, package: Path) -> None:
    assert_usage_error(publish(authority.key, package, "--expires", "soon"), "soon")


def test_expires_beyond_the_validity_cap_is_refused(authority: Authority, package: Path) -> None:
    assert_usage_error(publish(authority.key, package, "--expires", "91d"), "90 days")


def test_bad_rate_syntax_for_publish(authority: Authority, package: Path) -> None:
    assert_usage_error(publish(authority.key, package, "--upload-limit", "10XB"), "10XB")


# ---------------------------------------------------------------- node arguments and config


def test_no_trust(tmp_path: Path) -> None:
    assert_usage_error(node(tmp_path), "no trusted key", "--trust")


def test_bad_trust_key(tmp_path: Path) -> None:
    assert_usage_error(node(tmp_path, trust="ed25519:nothex"), "--trust")


def test_bad_peer_address(tmp_path: Path, authority: Authority) -> None:
    assert_usage_error(
        node(tmp_path, "--peer", "nonsense", trust=authority.pubkey), "nonsense", "HOST:PORT"
    )


def test_bad_listen_address(tmp_path: Path, authority: Authority) -> None:
    assert_usage_error(
        node(tmp_path, "--listen", "nonsense", trust=authority.pubkey), "nonsense", "HOST:PORT"
    )


def test_bad_rate_syntax(tmp_path: Path, authority: Authority) -> None:
    assert_usage_error(
        node(tmp_path, "--upload-limit", "10XB", trust=authority.pubkey), "--upload-limit", "10XB"
    )


def test_bad_size_syntax(tmp_path: Path, authority: Authority) -> None:
    assert_usage_error(
        node(tmp_path, "--cache-size", "lots", trust=authority.pubkey), "--cache-size", "lots"
    )


def test_unknown_config_key(tmp_path: Path, authority: Authority) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'trust = ["{authority.pubkey}"]\nmax_dowload_speed = "1MiB/s"\n')
    line = assert_usage_error(node(tmp_path, "--config", str(config)), "max_dowload_speed")
    assert "max_download_speed" in line  # the suggestion


def test_unknown_target_key_in_config(tmp_path: Path, authority: Authority) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'trust = ["{authority.pubkey}"]\n'
        '[targets."app/stable"]\npath = "app"\nhealthcmd = "app --version"\n'
    )
    assert_usage_error(node(tmp_path, "--config", str(config)), "healthcmd")


def test_wrong_type_in_config(tmp_path: Path, authority: Authority) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'trust = ["{authority.pubkey}"]\nauto_apply = "yes"\n')
    assert_usage_error(node(tmp_path, "--config", str(config)), "auto_apply", "true or false")


def test_config_not_toml(tmp_path: Path, authority: Authority) -> None:
    config = tmp_path / "node.toml"
    config.write_text("this is = = not toml\n")
    assert_usage_error(node(tmp_path, "--config", str(config), trust=authority.pubkey), "TOML")


def test_missing_config_file(tmp_path: Path, authority: Authority) -> None:
    assert_usage_error(
        node(tmp_path, "--config", str(tmp_path / "nope.toml"), trust=authority.pubkey),
        "nope.toml",
    )


def test_data_dir_not_writable(tmp_path: Path, authority: Authority) -> None:
    # A regular file where the data dir should be (chmod cannot stop root).
    blocker = tmp_path / "data"
    blocker.write_text("not a directory\n")
    assert_usage_error(
        node(tmp_path, "--data-dir", str(blocker), trust=authority.pubkey), str(blocker)
    )
    assert blocker.read_text() == "not a directory\n"


def test_port_in_use(tmp_path: Path, authority: Authority) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = node(tmp_path, "--listen", f"127.0.0.1:{port}", trust=authority.pubkey)
    assert_usage_error(res, f"127.0.0.1:{port}", "in use")


def test_target_directory_missing(tmp_path: Path, authority: Authority) -> None:
    res = node(
        tmp_path, "--target", f"app/stable={tmp_path}/no/such/dir/app", trust=authority.pubkey
    )
    assert_usage_error(res, "does not exist")


def test_health_cmd_without_target(tmp_path: Path, authority: Authority) -> None:
    res = node(tmp_path, "--health-cmd", "app/stable=true", trust=authority.pubkey)
    assert_usage_error(res, "app/stable", "--target")


# ---------------------------------------------------------------- channels and control commands


def test_bad_channel_name(tmp_path: Path) -> None:
    assert_usage_error(run_cli("apply", "../etc", "--data-dir", tmp_path), "../etc")


def test_bad_channel_name_for_publish(authority: Authority, package: Path) -> None:
    res = run_cli(
        "publish",
        "--key",
        authority.key,
        "--channel",
        "App Stable!",
        "--version",
        "2.0.0",
        "--file",
        package,
        "--peer",
        "127.0.0.1:9",
    )
    assert_usage_error(res, "App Stable!")


def test_bad_channel_name_for_target(tmp_path: Path, authority: Authority) -> None:
    res = node(tmp_path, "--target", f"../up={tmp_path}/app", trust=authority.pubkey)
    assert_usage_error(res, "../up")


def test_missing_data_dir_for_status(tmp_path: Path) -> None:
    assert_usage_error(run_cli("status", "--data-dir", tmp_path / "nowhere"), "does not exist")


def test_bad_version_for_quarantine_clear(tmp_path: Path) -> None:
    res = run_cli("quarantine", "clear", "app/stable", "v1", "--data-dir", tmp_path)
    assert_usage_error(res, "v1")


def test_unknown_channel_for_apply(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    target = tmp_path / "app"
    target.write_text("#!/bin/sh\necho 1.0.0\n")
    target.chmod(0o755)
    n = run_node("n1", trust=[authority.pubkey], targets=[f"app/stable={target}"])
    res = run_cli("apply", "other/channel", "--data-dir", n.data_dir)
    assert_usage_error(res, "other/channel")
    res = run_cli("rollback", "other/channel", "--data-dir", n.data_dir)
    assert_usage_error(res, "other/channel")
    assert n.proc.poll() is None  # the node shrugs it off


def test_unknown_command() -> None:
    assert_usage_error(run_cli("frobnicate"), "frobnicate")


def test_missing_required_flag(tmp_path: Path) -> None:
    assert_usage_error(run_cli("publish", "--channel", "app/stable"), "required")


def test_no_command() -> None:
    res = run_cli()
    assert_usage_error(res)
