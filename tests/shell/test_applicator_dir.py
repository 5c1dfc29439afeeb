"""Applicator on directory targets: tar releases made live by a symlink switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from p2pupdate.core import apply as core
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from tests.shell.apply_helpers import Events, make_package, make_tar

CHANNEL = "svc/stable"
CHECK = ["/bin/sh", "-c", "test -x bin/run && bin/run"]


def release(version: str, *, good: bool = True) -> bytes:
    run = f"#!/bin/sh\necho svc {version}\nexit {0 if good else 1}\n".encode()
    return make_tar(
        {"bin/run": run, "VERSION": version.encode(), "lib/data.txt": b"x" * 100},
        symlinks={"lib64": "lib"},
    )


class DirEnv:
    def __init__(self, tmp: Path, max_size: int = 1 << 30) -> None:
        self.tmp = tmp
        self.srv = tmp / "srv"
        self.srv.mkdir()
        self.target = self.srv / "svc"
        self.events = Events()
        self.app = Applicator(tmp / "data", tmp / "backups", self.events, max_size)
        self.spec = TargetSpec(CHANNEL, self.target, is_dir=True, health_cmd=CHECK)

    async def apply(self, version: str, content: bytes) -> bool:
        pkg, pid = make_package(self.tmp / "cache", f"{version}.tar", content)
        return await self.app.apply(self.spec, version, pkg, pid)

    def live(self) -> str:
        return (self.target / "VERSION").read_text()

    def outside_files(self) -> set[Path]:
        """Every path outside the releases directory (what a hostile archive must not touch)."""
        releases = self.srv / "svc.releases"
        return {p for p in self.tmp.rglob("*") if releases not in p.parents}


@pytest.fixture
def denv(tmp_path: Path) -> DirEnv:
    return DirEnv(tmp_path)


async def test_releases_go_live_by_symlink_switch_and_bad_one_rolls_back(denv: DirEnv) -> None:
    assert await denv.apply("1.0.0", release("1.0.0"))
    assert denv.target.is_symlink() and denv.live() == "1.0.0"
    assert not os.path.isabs(os.readlink(denv.target))  # relative: the tree can move
    assert (denv.target / "lib64" / "data.txt").read_bytes() == b"x" * 100
    first = denv.target.resolve()
    assert first.with_name(first.name + ".complete").exists()  # completion marker, last

    assert await denv.apply("2.0.0", release("2.0.0"))
    assert denv.live() == "2.0.0"
    assert first.is_dir()  # the previous release is kept for rollback
    assert "svc 2.0.0" in denv.events.of("update_complete")[-1]["health_output"]

    denv.events.clear()
    assert not await denv.apply("3.0.0", release("3.0.0", good=False))
    assert denv.live() == "2.0.0"
    assert denv.events.one("rolled_back")["restored_version"] == "2.0.0"
    assert denv.app.quarantined(CHANNEL) == ["3.0.0"]
    releases = sorted(p.name for p in (denv.srv / "svc.releases").iterdir() if p.is_dir())
    assert [r.split("-")[0] for r in releases] == ["1.0.0", "2.0.0"]  # the bad one is gone

    assert await denv.app.rollback(denv.spec)
    assert denv.live() == "1.0.0"
    assert denv.app.installed_version(denv.spec) == "1.0.0"


async def test_old_releases_are_pruned(denv: DirEnv) -> None:
    for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        assert await denv.apply(v, release(v))
    names = sorted(p.name.split("-")[0] for p in (denv.srv / "svc.releases").iterdir())
    # live 4.0.0 plus two previous ones, each with its completion marker
    assert names == ["2.0.0", "2.0.0", "3.0.0", "3.0.0", "4.0.0", "4.0.0"]


async def test_a_real_directory_is_adopted_on_first_install(denv: DirEnv) -> None:
    denv.target.mkdir()
    (denv.target / "VERSION").write_text("0.9.0")
    (denv.target / "bin").mkdir()
    (denv.target / "bin" / "run").write_bytes(b"#!/bin/sh\necho old\n")
    os.chmod(denv.target / "bin" / "run", 0o755)
    assert await denv.apply("1.0.0", release("1.0.0"))
    assert denv.target.is_symlink() and denv.live() == "1.0.0"
    assert await denv.app.rollback(denv.spec)
    assert denv.live() == "0.9.0"  # the adopted original is the backup
    assert denv.events.of("rolled_back")[-1]["restored_version"] is None


async def test_a_bad_first_release_over_an_adopted_directory_restores_it(denv: DirEnv) -> None:
    denv.target.mkdir()
    (denv.target / "VERSION").write_text("0.9.0")
    assert not await denv.apply("1.0.0", release("1.0.0", good=False))
    assert denv.live() == "0.9.0"


HOSTILE = {
    "dotdot": make_tar({"../evil": b"pwned"}),
    "deep_dotdot": make_tar({"a/b/../../../evil": b"pwned"}),
    "absolute": make_tar({"/tmp/p2pupdate-test-evil": b"pwned"}),
    "symlink_out": make_tar({}, symlinks={"escape": "../../.."}),
    "symlink_abs": make_tar({}, symlinks={"etc": "/etc"}),
    "write_through_link": make_tar({"lnk/evil": b"pwned"}, symlinks={"lnk": ".."}),
    "hardlink_out": make_tar({}, hardlinks={"shadow": "/etc/shadow"}),
    "hardlink_dotdot": make_tar({}, hardlinks={"x": "../../outside"}),
    "device": make_tar({}, devices=["null"]),
    # Each link looks inside on paper; together z resolves to the release's parent.
    "link_chain": make_tar({}, symlinks={"a": ".", "z": "a/.."}),
    "link_chain_reversed": make_tar({}, symlinks={"z": "a/..", "a": "."}),
    "not_a_tar": b"this is not a tar archive at all" * 40,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_archive_is_refused_and_writes_nothing_outside(
    denv: DirEnv, name: str
) -> None:
    assert await denv.apply("1.0.0", release("1.0.0"))
    pkg, pid = make_package(denv.tmp / "cache", "hostile.tar", HOSTILE[name])
    before = denv.outside_files()
    denv.events.clear()
    assert not await denv.app.apply(denv.spec, "2.0.0", pkg, pid)
    refused = denv.events.one("update_refused")
    assert refused["reason"] == core.BAD_ARCHIVE and refused["version"] == "2.0.0"
    assert denv.events.one("quarantined")["version"] == "2.0.0"
    assert denv.live() == "1.0.0"
    after = denv.outside_files()
    assert after - before == set()
    assert not await trio.Path("/tmp/p2pupdate-test-evil").exists()
    live_release = denv.target.resolve()
    assert {p.name for p in (denv.srv / "svc.releases").iterdir() if p.is_dir()} == {
        live_release.name
    }


@pytest.mark.parametrize("name", ["link_chain", "link_chain_reversed"])
def test_a_symlink_chain_is_refused_before_anything_is_unpacked(tmp_path: Path, name: str) -> None:
    from p2pupdate.errors import ApplyError
    from p2pupdate.shell.install.unpack import extract_release

    archive = tmp_path / "chain.tar"
    archive.write_bytes(HOSTILE[name])
    release = tmp_path / "releases" / "2.0.0"
    release.parent.mkdir()
    with pytest.raises(ApplyError) as err:
        extract_release(archive, release, 1 << 20)
    assert err.value.reason == core.BAD_ARCHIVE
    assert "through other links" in str(err.value)
    assert list(release.parent.iterdir()) == []  # the pre-check refused it: nothing written


@pytest.mark.parametrize("change", ["content", "member"])
async def test_a_cached_archive_changed_after_verification_is_not_made_live(
    tmp_path: Path, change: str
) -> None:
    """The cache file is swapped between the hash check and the unpacking."""
    good = release("2.0.0")
    if change == "content":  # same headers, other bytes in a file: only a hash sees it
        evil = good.replace(b"echo svc 2.0.0", b"echo pwn 2.0.0")
    else:  # another member list, itself harmless
        evil = make_tar({"bin/run": b"#!/bin/sh\necho pwned\n", "VERSION": b"2.0.0"})
    assert evil != good
    pkg, pid = make_package(tmp_path / "cache", "2.tar", good)

    class Tamper(Events):
        armed = True

        def __call__(self, event: str, fields: dict[str, object]) -> None:
            super().__call__(event, fields)
            if event == "applying" and self.armed:  # emitted after the hash was checked
                pkg.write_bytes(evil)

    denv = DirEnv(tmp_path)
    assert await denv.apply("1.0.0", release("1.0.0"))
    tamper = Tamper()
    app = Applicator(tmp_path / "data", tmp_path / "backups", tamper)
    assert not await app.apply(denv.spec, "2.0.0", pkg, pid)
    assert tamper.one("update_refused")["reason"] == core.HASH_MISMATCH
    assert tamper.of("quarantined") == []  # not the release's fault
    assert denv.live() == "1.0.0"
    releases = denv.srv / "svc.releases"
    assert {p.name for p in releases.iterdir()} == {
        denv.target.resolve().name,
        denv.target.resolve().name + ".complete",
    }
    # Once the cache holds the genuine bytes again, the release installs.
    tamper.armed = False
    pkg.write_bytes(good)
    assert await app.apply(denv.spec, "2.0.0", pkg, pid)
    assert denv.live() == "2.0.0"


async def test_archive_that_unpacks_past_the_limit_is_refused(tmp_path: Path) -> None:
    denv = DirEnv(tmp_path, max_size=64 * 1024)
    bomb = make_tar({"zeros": bytes(1024 * 1024)}, mode="w:gz")
    assert len(bomb) < 64 * 1024
    assert not await denv.apply("1.0.0", bomb)
    assert denv.events.one("update_refused")["reason"] == core.BAD_ARCHIVE
    assert not denv.target.exists() and not denv.target.is_symlink()


async def test_a_file_where_the_directory_target_should_be_is_not_replaced(
    denv: DirEnv,
) -> None:
    denv.target.write_text("precious")
    assert not await denv.apply("1.0.0", release("1.0.0"))
    assert denv.events.one("update_failed")["reason"] == core.INSTALL_FAILED
    assert denv.target.read_text() == "precious"
