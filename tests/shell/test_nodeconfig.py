"""Node settings: TOML config merged with flags; every user mistake is one clear UsageError."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.cli import build_parser
from p2pupdate.core.keys import format_pubkey
from p2pupdate.errors import UsageError
from p2pupdate.shell.nodeconfig import (
    NodeSettings,
    format_hostport,
    load_settings,
    parse_hostport,
)

KEY1 = format_pubkey(bytes(nacl.signing.SigningKey(b"\x01" * 32).verify_key))
KEY2 = format_pubkey(bytes(nacl.signing.SigningKey(b"\x02" * 32).verify_key))
GiB = 1024**3
MiB = 1024**2


def node_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["node", *argv])


def base_argv(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--trust", KEY1]


def load(tmp_path: Path, *extra: str, config: str | None = None) -> NodeSettings:
    argv = list(extra)
    if config is not None:
        path = tmp_path / "node.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    return load_settings(node_args(*argv))


def usage_error(tmp_path: Path, *extra: str, config: str | None = None) -> str:
    with pytest.raises(UsageError) as info:
        load(tmp_path, *extra, config=config)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- what works


def test_minimal_flags_give_the_documented_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, *base_argv(tmp_path))
    assert s.data_dir == tmp_path / "data"
    assert s.data_dir.is_dir()
    assert s.listen == ("127.0.0.1", 0)
    assert s.peers == ()
    assert s.trust == frozenset({bytes.fromhex(KEY1.removeprefix("ed25519:"))})
    assert s.trust_threshold == 1
    assert s.targets == ()
    assert (s.max_upload_speed, s.max_download_speed) == (0, 0)
    assert s.cache_size == 1 * GiB
    assert s.events is None
    assert s.events_max_size == 64 * MiB
    assert (s.auto_check, s.auto_download, s.auto_apply) == (True, True, True)
    assert s.check_interval == 30.0
    assert s.backup_dir == tmp_path / "data" / "backups"
    assert s.max_package_size == 4 * GiB
    assert (s.max_connections, s.target_connections) == (64, 8)
    assert (s.boot_attempts, s.confirm_window, s.ban_period) == (3, 30.0, 600.0)
    assert (s.log_level, s.log_json, s.control_socket) == ("info", False, None)


def test_constructed_settings_default_backup_dir_to_data_dir(tmp_path: Path) -> None:
    s = NodeSettings(data_dir=tmp_path, listen=("127.0.0.1", 0))
    assert s.backup_dir == tmp_path / "backups"


def test_all_flags(tmp_path: Path) -> None:
    target = tmp_path / "app"
    s = load(
        tmp_path,
        *base_argv(tmp_path),
        "--peer", "127.0.0.1:4001",
        "--peer", "[::1]:4002",
        "--trust", KEY2,
        "--trust-threshold", "2",
        "--target", f"app/stable={target}",
        "--health-cmd", "app/stable=/bin/sh -c 'exit 0'",
        "--upload-limit", "10MiB/s",
        "--download-limit", "512KiB",
        "--cache-size", "2GiB",
        "--events", str(tmp_path / "events.jsonl"),
        "--events-max-size", "8MiB",
        "--check-interval", "0.2",
        "--log-level", "debug",
        "--log-json",
    )  # fmt: skip
    assert s.peers == (("127.0.0.1", 4001), ("::1", 4002))
    assert len(s.trust) == 2
    assert s.trust_threshold == 2
    (t,) = s.targets
    assert (t.channel, t.path, t.is_dir, t.auto_apply) == ("app/stable", target, False, True)
    assert t.health_cmd == ["/bin/sh", "-c", "exit 0"]
    assert (s.max_upload_speed, s.max_download_speed) == (10 * MiB, 512 * 1024)
    assert s.cache_size == 2 * GiB
    assert s.events == tmp_path / "events.jsonl"
    assert s.events_max_size == 8 * MiB
    assert s.check_interval == 0.2
    assert (s.log_level, s.log_json) == ("debug", True)


FULL_CONFIG = """
data_dir = "data"
listen = "0.0.0.0:4000"
peers = ["10.0.0.2:4000", "node3.example:4000"]
trust = ["{key1}"]
trust_threshold = 1
max_upload_speed = "1MiB/s"
max_download_speed = 1000
cache_size = "512MiB"
events = "events.jsonl"
events_max_size = "1MiB"
auto_check = false
check_interval = 0.25
auto_download = false
auto_apply = false
backup_dir = "/var/backups/p2p"
max_package_size = "1GiB"
max_connections = 10
target_connections = 3
boot_attempts = 5
confirm_window = "2m"
ban_period = 60
log_level = "warning"
log_json = true
control_socket = "ctl.sock"

[targets."app/stable"]
path = "bin/app"
health_cmd = "bin/app --self-test 'a b'"
restart_cmd = ["systemctl", "restart", "app"]
auto_apply = true
version = "1.3.0"
health_timeout = 5
confirm_window = "90s"
max_attempts = 2
env = {{ APP_ENV = "prod" }}

[targets."web/site"]
path = "site/"
"""


def test_every_config_key(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    s = load(tmp_path, config=FULL_CONFIG.format(key1=KEY1))
    # Relative paths in the file are relative to the file's directory.
    assert s.data_dir == tmp_path / "data"
    assert s.listen == ("0.0.0.0", 4000)
    assert s.peers == (("10.0.0.2", 4000), ("node3.example", 4000))
    assert (s.max_upload_speed, s.max_download_speed, s.cache_size) == (MiB, 1000, 512 * MiB)
    assert s.events == tmp_path / "events.jsonl"
    assert s.events_max_size == MiB
    assert (s.auto_check, s.auto_download, s.auto_apply) == (False, False, False)
    assert s.check_interval == 0.25
    assert s.backup_dir == Path("/var/backups/p2p")
    assert s.max_package_size == GiB
    assert (s.max_connections, s.target_connections, s.boot_attempts) == (10, 3, 5)
    assert (s.confirm_window, s.ban_period) == (120.0, 60.0)
    assert (s.log_level, s.log_json) == ("warning", True)
    assert s.control_socket == tmp_path / "ctl.sock"
    app, web = s.targets
    assert app.channel == "app/stable"
    assert app.path == tmp_path / "bin" / "app"
    assert app.is_dir is False
    assert app.health_cmd == ["bin/app", "--self-test", "a b"]
    assert app.restart_cmd == ["systemctl", "restart", "app"]
    assert app.auto_apply is True
    assert app.version == "1.3.0"
    assert (app.health_timeout, app.confirm_window, app.max_attempts) == (5.0, 90.0, 2)
    assert app.env == {"APP_ENV": "prod"}
    # A target with no auto_apply of its own takes the global one.
    assert (web.channel, web.path, web.is_dir, web.auto_apply) == (
        "web/site",
        tmp_path / "site",
        True,
        False,
    )


def test_targets_as_an_array_of_tables(tmp_path: Path) -> None:
    config = f"""
trust = ["{KEY1}"]
[[targets]]
channel = "a"
path = "a.bin"
[[targets]]
channel = "b"
path = "b.bin"
"""
    s = load(tmp_path, "--data-dir", str(tmp_path / "d"), "--listen", "h:1", config=config)
    assert [(t.channel, t.path.name) for t in s.targets] == [("a", "a.bin"), ("b", "b.bin")]


def test_flags_override_config_scalars(tmp_path: Path) -> None:
    config = f"""
data_dir = "from-file"
listen = "127.0.0.1:4000"
trust = ["{KEY1}"]
cache_size = "2GiB"
max_upload_speed = "1MiB/s"
check_interval = 60
log_level = "error"
"""
    s = load(
        tmp_path,
        "--data-dir", str(tmp_path / "from-flag"),
        "--listen", "127.0.0.1:5000",
        "--cache-size", "512MiB",
        "--check-interval", "5m",
        "--log-level", "debug",
        config=config,
    )  # fmt: skip
    assert s.data_dir == tmp_path / "from-flag"
    assert not (tmp_path / "from-file").exists()
    assert s.listen == ("127.0.0.1", 5000)
    assert s.cache_size == 512 * MiB
    assert s.max_upload_speed == MiB  # not given as a flag: the file's value stays
    assert s.check_interval == 300.0
    assert s.log_level == "debug"


def test_log_json_false_in_file_true_by_flag(tmp_path: Path) -> None:
    config = f'trust = ["{KEY1}"]\nlog_json = true\n'
    argv = ["--data-dir", str(tmp_path / "d"), "--listen", "h:1"]
    assert load(tmp_path, *argv, config=config).log_json is True
    config = f'trust = ["{KEY1}"]\nlog_json = false\n'
    assert load(tmp_path, *argv, "--log-json", config=config).log_json is True


def test_peer_and_trust_flags_add_to_the_file(tmp_path: Path) -> None:
    config = f'peers = ["10.0.0.1:4000", "10.0.0.2:4000"]\ntrust = ["{KEY1}"]\n'
    s = load(
        tmp_path,
        "--data-dir", str(tmp_path / "d"),
        "--listen", "127.0.0.1:0",
        "--peer", "10.0.0.2:4000",
        "--peer", "10.0.0.3:4000",
        "--trust", KEY2,
        "--trust", KEY1,
        config=config,
    )  # fmt: skip
    assert s.peers == (("10.0.0.1", 4000), ("10.0.0.2", 4000), ("10.0.0.3", 4000))
    assert len(s.trust) == 2


def test_target_flag_replaces_the_path_and_keeps_config_settings(tmp_path: Path) -> None:
    config = f"""
trust = ["{KEY1}"]
[targets."app/stable"]
path = "old/app"
restart_cmd = "systemctl restart app"
auto_apply = false
version = "1.0.0"
"""
    new = tmp_path / "new-app"
    s = load(
        tmp_path,
        "--data-dir", str(tmp_path / "d"),
        "--listen", "h:1",
        "--target", f"app/stable={new}",
        "--target", f"other={tmp_path / 'other'}",
        config=config,
    )  # fmt: skip
    app, other = s.targets
    assert app.path == new
    assert app.restart_cmd == ["systemctl", "restart", "app"]
    assert (app.auto_apply, app.version) == (False, "1.0.0")
    assert (other.channel, other.auto_apply, other.health_cmd) == ("other", True, None)


def test_a_command_line_target_is_applied_automatically_even_when_the_global_is_off(
    tmp_path: Path,
) -> None:
    config = f"""
trust = ["{KEY1}"]
auto_apply = false
[targets."db/stable"]
path = "db"
"""
    s = load(
        tmp_path,
        "--data-dir", str(tmp_path / "d"),
        "--listen", "h:1",
        "--target", f"app/stable={tmp_path / 'app'}",
        config=config,
    )  # fmt: skip
    by_channel = {t.channel: t for t in s.targets}
    assert by_channel["app/stable"].auto_apply is True  # docs/operations.md: CLI targets auto-apply
    assert by_channel["db/stable"].auto_apply is False  # the file's target: the global


def test_health_cmd_flag_for_a_config_target(tmp_path: Path) -> None:
    config = f'trust = ["{KEY1}"]\n[targets.app]\npath = "app"\nhealth_cmd = ["old"]\n'
    s = load(
        tmp_path, *base_argv(tmp_path), "--health-cmd", "app=curl -sf localhost", config=config
    )
    assert s.targets[0].health_cmd == ["curl", "-sf", "localhost"]


def test_directory_targets(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    s = load(
        tmp_path,
        *base_argv(tmp_path),
        "--target", f"a={tmp_path / 'slash'}/",
        "--target", f"b={tmp_path / 'existing'}",
        "--target", f"c={tmp_path / 'file'}",
    )  # fmt: skip
    assert [(t.path.name, t.is_dir) for t in s.targets] == [
        ("slash", True),
        ("existing", True),
        ("file", False),
    ]


def test_relative_flag_paths_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load(tmp_path, "--data-dir", "d", "--listen", "h:1", "--trust", KEY1, "--target", "a=x")
    assert s.data_dir == tmp_path / "d"
    assert s.targets[0].path == tmp_path / "x"


def test_config_cannot_be_read_from_a_node_flag_alone(tmp_path: Path) -> None:
    # data_dir and listen can both come from the file.
    config = f'data_dir = "d"\nlisten = "127.0.0.1:4000"\ntrust = ["{KEY1}"]\n'
    s = load(tmp_path, config=config)
    assert s.data_dir == tmp_path / "d"


# ---------------------------------------------------------------- user mistakes


def test_error_config_file_missing(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--config", str(tmp_path / "nope.toml"))
    assert "--config" in msg
    assert "no such file" in msg


def test_error_config_file_is_a_directory(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--config", str(tmp_path))
    assert "is a directory" in msg


def test_error_config_invalid_toml(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="cache_size = = 3\n")
    assert "invalid TOML" in msg
    assert "line 1" in msg


def test_error_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--config", str(path))
    assert "UTF-8" in msg


def test_error_unknown_config_key(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="cache_sise = 5\n")
    assert "unknown key 'cache_sise'" in msg
    assert "did you mean 'cache_size'" in msg


def test_error_unknown_target_key(tmp_path: Path) -> None:
    config = '[targets.app]\npath = "x"\nhealthcmd = "true"\n'
    msg = usage_error(tmp_path, *base_argv(tmp_path), config=config)
    assert "targets.'app'" in msg
    assert "unknown key 'healthcmd'" in msg
    assert "health_cmd" in msg


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("cache_size = [1]", "cache_size"),
        ("max_upload_speed = true", "max_upload_speed"),
        ("auto_check = 'yes'", "auto_check"),
        ("auto_apply = 1", "auto_apply"),
        ("trust_threshold = true", "trust_threshold"),
        ("max_connections = 1.5", "max_connections"),
        ("peers = '10.0.0.1:4000'", "peers"),
        ("peers = [4000]", "peers[0]"),
        ("check_interval = true", "check_interval"),
        ("events = 5", "events"),
        ("log_json = 'true'", "log_json"),
        ("targets = 'app'", "targets"),
        ("targets = [{ path = 'x' }]", "targets[0]"),
        ("[targets.app]\npath = 5", "targets.'app'.path"),
        ("[targets.app]\npath = 'x'\nmax_attempts = '3x'", "targets.'app'.max_attempts"),
        ("[targets.app]\npath = 'x'\nhealth_cmd = [1]", "targets.'app'.health_cmd"),
        ("[targets.app]\npath = 'x'\nenv = { A = 1 }", "targets.'app'.env"),
    ],
)
def test_error_wrong_type_names_the_key(tmp_path: Path, line: str, key: str) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config=line + "\n")
    assert f": {key}:" in msg


def test_missing_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(tmp_path / "env-dir"))
    s = load(tmp_path, "--listen", "127.0.0.1:0", "--trust", KEY1)
    assert s.data_dir == tmp_path / "env-dir" and s.data_dir.is_dir()
    # The config file's data_dir wins over the environment, the flag over both.
    s = load(tmp_path, "--listen", "127.0.0.1:0", "--trust", KEY1, config='data_dir = "c"\n')
    assert s.data_dir == tmp_path / "c"
    s = load(tmp_path, *base_argv(tmp_path), config='data_dir = "c"\n')
    assert s.data_dir == tmp_path / "data"


def test_data_dir_from_the_environment_that_cannot_be_made_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(tmp_path / "file"))
    msg = usage_error(tmp_path, "--listen", "127.0.0.1:0", "--trust", KEY1)
    assert msg.startswith("P2PUPDATE_DATA_DIR ") and "not a directory" in msg


def test_error_missing_listen(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, "--data-dir", str(tmp_path / "d"), "--trust", KEY1)
    assert msg.startswith("--listen is required")


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:", "127.0.0.1:99999", "::1:4000", ":80"])
def test_error_bad_listen_address(tmp_path: Path, bad: str) -> None:
    msg = usage_error(tmp_path, "--data-dir", str(tmp_path), "--trust", KEY1, "--listen", bad)
    assert msg.startswith("--listen: bad address")


def test_error_bad_peer_address(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--peer", "10.0.0.300:4000")
    assert msg.startswith("--peer: bad address '10.0.0.300:4000'")
    assert "not an IPv4 address" in msg


def test_error_bad_peer_address_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config='peers = ["ok:1", "bad host:1"]\n')
    assert ": peers[1]: bad address 'bad host:1'" in msg


def test_error_peer_port_zero(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--peer", "127.0.0.1:0")
    assert "port 0" in msg


def test_error_bad_rate_syntax(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--upload-limit", "10 parsecs")
    assert msg.startswith("--upload-limit: bad rate '10 parsecs'")


def test_error_bad_rate_syntax_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config='max_download_speed = "fast"\n')
    assert ": max_download_speed: bad rate 'fast'" in msg


def test_error_bad_size_syntax(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--cache-size", "lots")
    assert msg.startswith("--cache-size: bad size 'lots'")


def test_error_negative_size_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="cache_size = -1\n")
    assert ": cache_size: must not be negative" in msg


@pytest.mark.parametrize("bad", ["soon", "0", "-1", "5 min"])
def test_error_bad_check_interval(tmp_path: Path, bad: str) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--check-interval", bad)
    assert msg.startswith("--check-interval: bad duration")


def test_error_zero_check_interval_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="check_interval = 0\n")
    assert ": check_interval: must be a positive number" in msg


def test_error_bad_pubkey(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--trust", "ed25519:abcd")
    assert msg.startswith("--trust: bad public key 'ed25519:abcd'")


def test_error_bad_pubkey_in_config(tmp_path: Path) -> None:
    argv = ["--data-dir", str(tmp_path / "d"), "--listen", "h:1"]
    msg = usage_error(tmp_path, *argv, config='trust = ["nope"]\n')
    assert ": trust[0]: bad public key 'nope'" in msg


def test_error_no_trust_at_all(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, "--data-dir", str(tmp_path / "d"), "--listen", "h:1")
    assert msg.startswith("no trusted key: give --trust PUBKEY")


def test_error_trust_threshold_above_key_count(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--trust-threshold", "2")
    assert "trust_threshold 2 is more than the 1 trusted key(s)" in msg


def test_error_trust_threshold_zero(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--trust-threshold", "0")
    assert msg.startswith("--trust-threshold: must be at least 1")


def test_error_target_connections_above_max(tmp_path: Path) -> None:
    msg = usage_error(
        tmp_path, *base_argv(tmp_path), config="max_connections = 4\ntarget_connections = 5\n"
    )
    assert "target_connections 5 is more than max_connections 4" in msg


def test_error_bad_log_level_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config='log_level = "loud"\n')
    assert ": log_level: must be one of debug, info, warning, error" in msg


def test_error_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    argv = ["--data-dir", str(tmp_path / "f"), "--listen", "h:1", "--trust", KEY1]
    msg = usage_error(tmp_path, *argv)
    assert msg == f"--data-dir {tmp_path / 'f'}: exists and is not a directory"


def test_error_data_dir_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    argv = ["--data-dir", str(tmp_path / "f" / "d"), "--listen", "h:1", "--trust", KEY1]
    msg = usage_error(tmp_path, *argv)
    assert "cannot create it" in msg


def test_error_data_dir_not_writable(tmp_path: Path) -> None:
    # Root may write anywhere chmod reaches; /proc refuses new files even to root.
    msg = usage_error(tmp_path, "--data-dir", "/proc", "--listen", "h:1", "--trust", KEY1)
    assert msg.startswith("--data-dir /proc: not writable")


def test_data_dir_is_created_private(tmp_path: Path) -> None:
    s = load(tmp_path, "--data-dir", str(tmp_path / "a" / "b"), "--listen", "h:1", "--trust", KEY1)
    assert s.data_dir.is_dir()
    assert os.stat(s.data_dir).st_mode & 0o777 == 0o700
    assert list(s.data_dir.iterdir()) == []  # the write probe is gone


def test_error_bad_channel_in_target(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", "App/../x=/tmp/x")
    assert msg.startswith("--target App/../x=/tmp/x: bad channel")


def test_error_bad_channel_in_config_target(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config='[targets."A B"]\npath = "x"\n')
    assert "bad channel 'A B'" in msg


def test_error_target_without_equals(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", "/opt/app")
    assert msg == "--target /opt/app: expected CHANNEL=PATH"


def test_error_target_without_path(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", "app=")
    assert "missing PATH" in msg


def test_error_target_parent_missing(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", f"app={tmp_path}/no/app")
    assert f"directory {tmp_path}/no does not exist" in msg


def test_error_target_dir_but_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", f"app={tmp_path}/f/")
    assert "is a file, not a directory" in msg


def test_error_target_path_used_twice(tmp_path: Path) -> None:
    msg = usage_error(
        tmp_path, *base_argv(tmp_path), "--target", f"a={tmp_path}/x", "--target", f"b={tmp_path}/x"
    )
    assert "is also the target of 'a'" in msg


def test_error_target_defined_twice_in_config(tmp_path: Path) -> None:
    config = '[[targets]]\nchannel = "a"\npath = "x"\n[[targets]]\nchannel = "a"\npath = "y"\n'
    msg = usage_error(tmp_path, *base_argv(tmp_path), config=config)
    assert "defined twice" in msg


def test_error_target_without_path_in_config(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="[targets.app]\nversion = '1.0.0'\n")
    assert "targets.'app': path is required" in msg


def test_error_target_bad_version(tmp_path: Path) -> None:
    msg = usage_error(
        tmp_path, *base_argv(tmp_path), config="[targets.app]\npath='x'\nversion='v1'\n"
    )
    assert "targets.'app'.version: bad version 'v1'" in msg


def test_error_health_cmd_without_target(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--health-cmd", "app=true")
    assert "no target for channel 'app'" in msg


def test_error_health_cmd_unbalanced_quote(tmp_path: Path) -> None:
    msg = usage_error(
        tmp_path, *base_argv(tmp_path), "--target", "app=x", "--health-cmd", "app=sh -c 'oops"
    )
    assert "cannot split command" in msg


def test_error_health_cmd_empty(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--target", "app=x", "--health-cmd", "app=  ")
    assert "empty command" in msg


def test_error_events_directory_missing(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), "--events", str(tmp_path / "no" / "e.jsonl"))
    assert "does not exist" in msg


# ---------------------------------------------------------------- HOST:PORT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4000", ("127.0.0.1", 4000)),
        ("[::1]:4000", ("::1", 4000)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("localhost:0", ("localhost", 0)),
        ("node-1.example.org.:65535", ("node-1.example.org.", 65535)),
    ],
)
def test_parse_hostport_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4000",
        "host",
        "host:",
        "host:-1",
        "host:+80",
        "host:65536",
        "host:٣",  # a non-ASCII digit
        "::1:4000",
        "[::1]4000",
        "[::1:4000",
        "[1.2.3.4]:80",
        "1.2.3:80",
        "01.2.3.4:80",
        "-host:80",
        "ho st:80",
        "a..b:80",
        ":80",
    ],
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="bad address"):
        parse_hostport(text)


def test_parse_hostport_port_zero_refused_for_peers() -> None:
    with pytest.raises(UsageError, match="port 0"):
        parse_hostport("h:0", allow_port_zero=False)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_parse_hostport_round_trips_ip_addresses(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    assert parse_hostport(format_hostport(str(addr), port)) == (str(addr), port)


@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True), min_size=1, max_size=4
    ),
    st.integers(1, 65535),
)
def test_parse_hostport_round_trips_host_names(labels: list[str], port: int) -> None:
    host = ".".join(labels)
    assert parse_hostport(format_hostport(host, port)) == (host, port)


@given(st.text(max_size=40))
def test_parse_hostport_any_text_gives_an_address_or_usage_error(text: str) -> None:
    try:
        host, port = parse_hostport(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert host
    assert 0 <= port <= 65535
    assert parse_hostport(format_hostport(host, port)) == (host, port)


@given(st.integers(65536, 10**6))
def test_parse_hostport_rejects_ports_above_65535(port: int) -> None:
    with pytest.raises(UsageError):
        parse_hostport(f"127.0.0.1:{port}")


def test_retry_settings_and_free_space_margin(tmp_path: Path) -> None:
    s = load(tmp_path, *base_argv(tmp_path))
    assert (s.retry_min, s.retry_max, s.min_free_space) == (30.0, 1800.0, 64 * MiB)
    s = load(
        tmp_path,
        *base_argv(tmp_path),
        config='retry_min = "5s"\nretry_max = "2m"\nmin_free_space = "1GiB"\n',
    )
    assert (s.retry_min, s.retry_max, s.min_free_space) == (5.0, 120.0, GiB)


def test_error_retry_max_below_retry_min(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config='retry_min = "1h"\nretry_max = "1m"\n')
    assert "retry_max 60s is less than retry_min 3600s" in msg


def test_error_retry_min_not_a_duration(tmp_path: Path) -> None:
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="retry_min = 0\n")
    assert ": retry_min: must be a positive number of seconds" in msg


def test_max_announcement_validity_defaults_to_90_days_and_is_a_config_duration(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, *base_argv(tmp_path)).max_announcement_validity == 90 * 86400
    s = load(tmp_path, *base_argv(tmp_path), config='max_announcement_validity = "180d"\n')
    assert s.max_announcement_validity == 180 * 86400
    msg = usage_error(tmp_path, *base_argv(tmp_path), config="max_announcement_validity = 0\n")
    assert "max_announcement_validity" in msg
