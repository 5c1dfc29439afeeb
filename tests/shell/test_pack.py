"""Deterministic, chunk-aligned directory archives (``p2pupdate pack``, ``publish --file DIR``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.cli import main
from p2pupdate.shell.install.pack import ALIGN, ALIGN_MIN, pack_directory
from p2pupdate.shell.install.unpack import extract_release
from p2pupdate.shell.keyfile import write_secret_key

C = 65536


def make_tree(root: Path, seed: int = 1) -> None:
    rng = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(rng.randbytes(ALIGN_MIN + 3 * C + 17))
    (root / "bin" / "app").chmod(0o700)
    (root / "lib" / "big.so").write_bytes(rng.randbytes(2 * ALIGN_MIN + 5))
    (root / "lib" / "deep" / "z.dat").write_bytes(rng.randbytes(ALIGN_MIN + 1))
    (root / "README").write_text("hello\n")
    (root / "lib" / "small.txt").write_text("small file\n")
    (root / "app").symlink_to("bin/app")


def pack(root: Path, out: Path) -> bytes:
    pack_directory(root, out)
    return out.read_bytes()


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + C] for i in range(0, len(data), C)]


def test_same_tree_packs_to_the_same_bytes_whatever_mtime_owner_and_creation_order(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "a")
    first = pack(tmp_path / "a", tmp_path / "1.tar")
    assert pack(tmp_path / "a", tmp_path / "2.tar") == first
    # A copy made at another time, with other mode bits (same executable bit) and
    # files created in another order.
    b = tmp_path / "b"
    (b / "lib" / "deep").mkdir(parents=True)
    (b / "bin").mkdir()
    for rel in ["lib/small.txt", "README", "lib/deep/z.dat", "lib/big.so", "bin/app"]:
        shutil.copyfile(tmp_path / "a" / rel, b / rel)
    (b / "bin" / "app").chmod(0o755)
    (b / "README").chmod(0o600)
    (b / "app").symlink_to("bin/app")
    os.utime(b / "lib" / "big.so", (1, 1))
    assert pack(b, tmp_path / "3.tar") == first
    # Touching every mtime changes nothing.
    for p in (tmp_path / "a").rglob("*"):
        os.utime(p, (12345, 12345), follow_symlinks=False)
    assert pack(tmp_path / "a", tmp_path / "4.tar") == first


def test_layout_normalized_fields_and_aligned_data(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    pack(tmp_path / "a", tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [
        "README", "app", "bin", "bin/app", "lib", "lib/big.so", "lib/deep",
        "lib/deep/z.dat", "lib/small.txt",
    ]  # fmt: skip
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        if m.isreg() and m.size >= ALIGN_MIN:
            assert m.offset_data % ALIGN == 0, m.name
    modes = {m.name: m.mode for m in members}
    assert modes["bin/app"] == 0o755 and modes["README"] == 0o644 and modes["bin"] == 0o755
    assert {m.name: m.linkname for m in members if m.issym()} == {"app": "bin/app"}


def test_a_changed_file_changes_only_its_own_chunks(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    old = pack(tmp_path / "a", tmp_path / "old.tar")
    # Same size, a few bytes changed in the middle of lib/big.so.
    big = tmp_path / "a" / "lib" / "big.so"
    with big.open("r+b") as f:
        f.seek(ALIGN_MIN + 100)
        f.write(b"patched")
    new = pack(tmp_path / "a", tmp_path / "new.tar")
    assert len(new) == len(old)
    diff = [i for i, (x, y) in enumerate(zip(chunks(old), chunks(new), strict=True)) if x != y]
    assert len(diff) == 1
    # A file that grows (bin/app, before every other aligned file): later aligned files'
    # chunks are all still in the old archive, only shifted by whole chunks.
    app = tmp_path / "a" / "bin" / "app"
    app.write_bytes(app.read_bytes() + b"x" * 3000)
    grown = pack(tmp_path / "a", tmp_path / "grown.tar")
    missing = [c for c in chunks(grown) if c not in set(chunks(new))]
    assert len(missing) <= 3, len(missing)  # app's tail, the padding, the README's neighbours
    assert len(missing) < len(chunks(grown)) // 10


def test_the_archive_unpacks_through_the_directory_target_checks(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    archive = tmp_path / "a.tar"
    data = pack(tmp_path / "a", archive)
    release = tmp_path / "release"
    extract_release(archive, release, 1 << 30, package_id=blake3.blake3(data).digest())
    for p in (tmp_path / "a").rglob("*"):
        q = release / p.relative_to(tmp_path / "a")
        if p.is_symlink():
            assert os.readlink(q) == os.readlink(p)
        elif p.is_file():
            assert q.read_bytes() == p.read_bytes()
    assert os.access(release / "bin" / "app", os.X_OK)
    assert not os.access(release / "README", os.X_OK)


def test_pack_command_and_its_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tree(tmp_path / "a")
    assert main(["pack", str(tmp_path / "a"), "--out", str(tmp_path / "x.tar")]) == 0
    assert (tmp_path / "x.tar").read_bytes() == pack(tmp_path / "a", tmp_path / "y.tar")
    os.mkfifo(tmp_path / "a" / "fifo")
    assert main(["pack", str(tmp_path / "a"), "--out", str(tmp_path / "z.tar")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fifo" in err
    assert not (tmp_path / "z.tar").exists()
    assert not list(tmp_path.glob(".z.tar.*"))
    assert main(["pack", str(tmp_path / "nope"), "--out", str(tmp_path / "z.tar")]) == 2
    (tmp_path / "a" / "fifo").unlink()
    assert main(["pack", str(tmp_path / "a"), "--out", str(tmp_path / "no" / "z.tar")]) == 2
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "a" / "README").chmod(0)
        assert main(["pack", str(tmp_path / "a"), "--out", str(tmp_path / "z.tar")]) == 2
    capsys.readouterr()
    assert main(["pack", str(tmp_path / "a"), "--out", str(tmp_path / "a" / "in.tar")]) == 2


def test_publish_file_dir_packs_the_directory_the_same_way(tmp_path: Path) -> None:
    import nacl.signing

    make_tree(tmp_path / "a")
    key = tmp_path / "k.key"
    write_secret_key(key, nacl.signing.SigningKey.generate())
    proc = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "publish", "--key", str(key),
         "--channel", "app/stable", "--version", "1.0.0", "--file", str(tmp_path / "a"),
         "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    data = pack(tmp_path / "a", tmp_path / "a.tar")
    assert described["package_id"] == blake3.blake3(data).hexdigest()
    assert described["size"] == len(data)


_NAMES = st.sampled_from(["a", "b", "c", "d.bin", "z", "sub/x", "sub/y", "sub/deep/q", "é"])
_SIZES = st.one_of(st.integers(0, 3000), st.integers(ALIGN_MIN, ALIGN_MIN + 3 * C))


@settings(max_examples=15, deadline=None)
@given(files=st.dictionaries(_NAMES, st.tuples(_SIZES, st.booleans()), min_size=1, max_size=6))
def test_any_tree_packs_deterministically_aligned_and_round_trips(
    files: dict[str, tuple[int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        root = tmp / "t"
        root.mkdir()
        rng = random.Random(len(files))
        for name, (size, executable) in files.items():
            path = root / name
            if path.parent.exists() and not path.parent.is_dir():
                continue  # "sub" is a file already: skip what would go under it
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))
            path.chmod(0o755 if executable else 0o600)
        first = pack(root, tmp / "1.tar")
        for p in root.rglob("*"):
            os.utime(p, (rng.randrange(1 << 30), rng.randrange(1 << 30)))
        assert pack(root, tmp / "2.tar") == first
        with tarfile.open(tmp / "1.tar") as tar:
            for m in tar.getmembers():
                assert m.mtime == 0 and m.uid == 0 and m.uname == ""
                if m.isreg() and m.size >= ALIGN_MIN:
                    assert m.offset_data % ALIGN == 0
        out = tmp / "x"
        extract_release(tmp / "1.tar", out, 1 << 30, package_id=blake3.blake3(first).digest())
        for p in root.rglob("*"):
            if p.is_file():
                q = out / p.relative_to(root)
                assert q.read_bytes() == p.read_bytes()
                assert os.access(q, os.X_OK) == bool(p.stat().st_mode & 0o111)
