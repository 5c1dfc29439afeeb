"""``p2pupdate admit`` / ``revoke`` and the node's ``--fleet`` flags, as real subprocesses.

Every mistake (a malformed or foreign certificate, a certificate for another
node, a wrong key file, --fleet without --admission) ends with exit 2 and one
line on stderr.
"""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import pytest

from p2pupdate.core.fleet import decode_admission, decode_revocations
from p2pupdate.core.keys import format_pubkey, parse_pubkey
from tests.e2e.conftest import CliResult, run_cli

__all__: list[str] = []

TRUST = format_pubkey(bytes(nacl.signing.SigningKey(b"\x01" * 32).verify_key))


def one_line_error(res: CliResult, *words: str) -> None:
    assert res.rc == 2, (res.rc, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr_lines) == 1, res.stderr
    for word in words:
        assert word in res.stderr_lines[0], (word, res.stderr_lines[0])


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, str]:
    res = run_cli("keygen", "--out", tmp_path / "fleet.key")
    assert res.rc == 0, res.stderr
    return tmp_path / "fleet.key", res.stdout.strip()


@pytest.fixture
def node_id(tmp_path: Path) -> str:
    data = tmp_path / "data"
    data.mkdir()
    res = run_cli("keygen", "--out", data / "node.key")
    assert res.rc == 0, res.stderr
    return res.stdout.strip()


def check_node(tmp_path: Path, *args: str | Path) -> CliResult:
    return run_cli(
        "node", "--data-dir", tmp_path / "data", "--listen", "127.0.0.1:0",
        "--trust", TRUST, "--check-config", *args,
    )  # fmt: skip


def test_admit_and_start_a_member(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    key, pub = fleet
    cert = tmp_path / "node.cert"
    res = run_cli("admit", "--fleet-key", key, "--node", node_id, "--expires", "30d", "--out", cert)
    assert res.rc == 0, res.stderr
    adm = decode_admission(cert.read_bytes())
    assert adm.signature_ok()
    assert adm.node_id == parse_pubkey(node_id)
    assert adm.fleet_key == parse_pubkey(pub)
    assert 29 * 86400 < adm.expires - adm.issued <= 30 * 86400
    res = check_node(tmp_path, "--fleet", pub, "--admission", cert)
    assert res.rc == 0, res.stderr


def test_admit_many_from_a_file(tmp_path: Path, fleet: tuple[Path, str]) -> None:
    ids = []
    for i in range(3):
        res = run_cli("keygen", "--out", tmp_path / f"k{i}.key")
        ids.append(res.stdout.strip())
    (tmp_path / "ids.txt").write_text("# fleet\n" + "\n".join(ids) + "\n")
    out = tmp_path / "certs"
    out.mkdir()
    res = run_cli(
        "admit", "--fleet-key", fleet[0], "--nodes-file", tmp_path / "ids.txt", "--out", out
    )
    assert res.rc == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        parse_pubkey(i).hex() + ".cert" for i in ids
    )


def test_revoke_writes_a_signed_list(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    out = tmp_path / "revoked"
    res = run_cli("revoke", "--fleet-key", fleet[0], "--node", node_id, "--out", out)
    assert res.rc == 0, res.stderr
    rev = decode_revocations(out.read_bytes())
    assert rev.signature_ok() and rev.revoked == (parse_pubkey(node_id),)
    res = check_node(
        tmp_path, "--fleet", fleet[1], "--admission", _cert(tmp_path, fleet, node_id),
        "--revocations", out,
    )  # fmt: skip
    assert res.rc == 0, res.stderr


def _cert(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> Path:
    cert = tmp_path / "node.cert"
    if not cert.exists():
        res = run_cli("admit", "--fleet-key", fleet[0], "--node", node_id, "--out", cert)
        assert res.rc == 0, res.stderr
    return cert


def test_malformed_certificate(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    bad = tmp_path / "bad.cert"
    bad.write_bytes(b"\x92\xc4\x03abc\xc4\x40" + b"x" * 64)
    one_line_error(check_node(tmp_path, "--fleet", fleet[1], "--admission", bad), "bad.cert")


def test_tampered_certificate(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    cert = _cert(tmp_path, fleet, node_id)
    data = bytearray(cert.read_bytes())
    data[-1] ^= 1  # the signature
    cert.write_bytes(bytes(data))
    res = check_node(tmp_path, "--fleet", fleet[1], "--admission", cert)
    one_line_error(res, "bad signature")


def test_foreign_certificate(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    other = run_cli("keygen", "--out", tmp_path / "other.key").stdout.strip()
    cert = _cert(tmp_path, fleet, node_id)
    res = check_node(tmp_path, "--fleet", other, "--admission", cert)
    one_line_error(res, "not given with --fleet")


def test_certificate_of_another_node(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    someone = run_cli("keygen", "--out", tmp_path / "someone.key").stdout.strip()
    cert = tmp_path / "someone.cert"
    assert run_cli("admit", "--fleet-key", fleet[0], "--node", someone, "--out", cert).rc == 0
    res = check_node(tmp_path, "--fleet", fleet[1], "--admission", cert)
    one_line_error(res, "is for node", someone)


def test_fleet_without_admission(tmp_path: Path, fleet: tuple[Path, str], node_id: str) -> None:
    one_line_error(check_node(tmp_path, "--fleet", fleet[1]), "--admission")


def test_admit_with_a_wrong_key_file(tmp_path: Path, node_id: str) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text("ed25519:" + "00" * 32 + "\n")
    wrong.chmod(0o600)
    res = run_cli("admit", "--fleet-key", wrong, "--node", node_id, "--out", tmp_path / "c")
    one_line_error(res, "wrong.key")


def test_admit_bad_node_id_and_expiry(tmp_path: Path, fleet: tuple[Path, str]) -> None:
    res = run_cli("admit", "--fleet-key", fleet[0], "--node", "nope", "--out", tmp_path / "c")
    one_line_error(res, "--node")
    good = run_cli("keygen", "--out", tmp_path / "n.key").stdout.strip()
    res = run_cli(
        "admit", "--fleet-key", fleet[0], "--node", good, "--expires", "soon", "--out",
        tmp_path / "c",
    )  # fmt: skip
    one_line_error(res, "--expires")
