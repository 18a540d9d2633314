"""Synchronization between two real engine processes on loopback."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.treeutil import assert_trees_equal

from .harness import EngineProcess, write_scenario

pytestmark = pytest.mark.integration

BLOCK = 64 * 1024


def make_varied_tree(root: Path, seed: int = 7) -> None:
    """Every kind of entry a synchronization must carry, and a few it must skip."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_text("hello, replica\n")
    (root / "multi-block.bin").write_bytes(rng.randbytes(5 * BLOCK + 1234))
    (root / "exact-blocks.bin").write_bytes(rng.randbytes(3 * BLOCK))
    zeros_and_data = bytearray(4 * BLOCK)
    zeros_and_data[BLOCK:BLOCK + 100] = rng.randbytes(100)
    (root / "zeros-and-data.bin").write_bytes(bytes(zeros_and_data))
    with open(root / "sparse.img", "wb") as f:  # 64 MiB apparent, three data extents
        f.truncate(64 << 20)
        for offset in (0, 10 << 20, (64 << 20) - 5000):
            f.seek(offset)
            f.write(rng.randbytes(5000))
    deep = root
    for i in range(40):  # a path far longer than most tools expect (well over 1000 bytes)
        deep = deep / f"level-{i:02d}-{'d' * 30}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("deep\n")
    (root / "naïve café ☕.txt").write_text("unicode name\n")
    os.makedirs(os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9"))
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9", b"\xff\xfe.bin"), "wb") as f:
        f.write(b"not utf-8 names\n")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "file.txt").write_text("nested\n")
    (root / "empty-dir").mkdir()
    (root / "link-rel").symlink_to("dir/sub/file.txt")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("does/not/exist")
    (root / "link-to-dir").symlink_to("dir")
    os.link(root / "small.txt", root / "dir" / "hardlink-to-small.txt")
    (root / "private.key").write_text("secret\n")
    os.chmod(root / "private.key", 0o600)
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o755)
    os.chmod(root / "dir" / "sub", 0o750)
    os.mkfifo(root / "a-fifo")
    os.utime(root / "small.txt", ns=(1_000_000_000, 1_000_000_000))  # 1970: an old mtime


def scenario_file(tmp_path: Path, master_root: Path, replica_root: Path,
                  method: str = "block") -> Path:
    return write_scenario(tmp_path / "scenario.toml", "files", "alpha", "beta",
                          [(master_root, replica_root)], method=method)


def protect_varied_tree(alpha: EngineProcess, tmp_path: Path) -> tuple[Path, Path]:
    """Build the varied tree, add the scenario `files` over it and run `scenario start`."""
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    make_varied_tree(master_root)
    alpha.cli("scenario", "add", str(scenario_file(tmp_path, master_root, replica_root)))
    alpha.cli("scenario", "start", "files")
    return master_root, replica_root


def test_varied_tree_synchronizes_equal(engines: tuple[EngineProcess, EngineProcess],
                                        tmp_path: Path) -> None:
    """Given a tree with every kind of entry, `scenario start` makes the replica equal."""
    alpha, _ = engines
    master_root, replica_root = protect_varied_tree(alpha, tmp_path)

    assert_trees_equal(master_root, replica_root)
    assert (replica_root / "sparse.img").stat().st_blocks * 512 < 1 << 20, "holes were filled"
    assert not (replica_root / "a-fifo").exists()
    report = json.loads(alpha.cli("report", "files", "--json").stdout)
    assert report["ok"] is True
    assert report["special_skipped"] == 1
    assert report["bytes_sent"] < 4 << 20  # the 64 MiB sparse image: its holes never travel
    codes = [e["code"] for e in alpha.events("files")]
    assert "SB2105" in codes
    assert "SB2102" in codes
    status = json.loads(alpha.cli("status", "files", "--json").stdout)
    assert status[0]["consistent"] is True


@pytest.mark.parametrize("method", ["block", "file"])
def test_resync_after_edits(engines: tuple[EngineProcess, EngineProcess], tmp_path: Path,
                            method: str) -> None:
    """Edits, appends, truncations, deletions and renames on the master reach the replica, and
    the block method sends little more than what changed."""
    alpha, _ = engines
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    make_varied_tree(master_root)
    rng = random.Random(11)
    big = master_root / "big.img"
    big.write_bytes(rng.randbytes(16 << 20))
    alpha.cli("scenario", "add", str(scenario_file(tmp_path, master_root, replica_root, method)))
    alpha.cli("scenario", "start", "files")
    assert_trees_equal(master_root, replica_root)
    alpha.cli("scenario", "stop", "files")  # no real-time replication: the sync does it all

    with open(big, "r+b") as f:  # two small in-place edits in a 16 MiB file
        f.seek(3 << 20)
        f.write(b"x" * 100)
        f.seek(11 << 20)
        f.write(b"y" * 100)
    with open(master_root / "small.txt", "a") as f:
        f.write("appended\n")
    with open(master_root / "zeros-and-data.bin", "ab") as f:  # grows in place, part zeros
        f.write(bytes(BLOCK * 2) + rng.randbytes(777))
    with open(master_root / "sparse.img", "r+b") as f:  # data lands in a hole
        f.seek(30 << 20)
        f.write(rng.randbytes(BLOCK))
    with open(master_root / "multi-block.bin", "r+b") as f:
        f.truncate(BLOCK + 10)
    (master_root / "exact-blocks.bin").unlink()
    shutil.rmtree(master_root / "dir" / "sub")
    (master_root / "script.sh").rename(master_root / "renamed.sh")
    (master_root / "new-dir").mkdir()
    (master_root / "new-dir" / "new.txt").write_text("new\n")
    os.chmod(master_root / "private.key", 0o640)
    (master_root / "link-rel").unlink()
    (master_root / "link-rel").symlink_to("renamed.sh")

    alpha.cli("sync", "files")

    assert_trees_equal(master_root, replica_root)
    report = json.loads(alpha.cli("report", "files", "--json").stdout)
    assert report["ok"] is True
    if method == "block":
        assert report["bytes_sent"] < 1 << 20, report  # two 64 KiB blocks and small files
    else:
        assert report["bytes_sent"] > 16 << 20, report  # the file method sends big.img whole


def test_unchanged_resync_sends_nothing(engines: tuple[EngineProcess, EngineProcess],
                                        tmp_path: Path) -> None:
    """A second synchronization of an unchanged tree moves no data."""
    alpha, _ = engines
    master_root, replica_root = protect_varied_tree(alpha, tmp_path)
    alpha.cli("sync", "files")
    report = json.loads(alpha.cli("report", "files", "--json").stdout)
    assert report["bytes_sent"] == 0
    assert report["files_differing"] == 0
    assert_trees_equal(master_root, replica_root)


def test_deletion_guard_keeps_replica(engines: tuple[EngineProcess, EngineProcess],
                                      tmp_path: Path) -> None:
    """An empty or missing master root deletes nothing on the replica and says why."""
    alpha, _ = engines
    master_root, replica_root = protect_varied_tree(alpha, tmp_path)
    alpha.cli("scenario", "stop", "files")  # the synchronization's own guard, alone
    before = sorted(p.name for p in replica_root.iterdir())

    master_root.rename(tmp_path / "master-unmounted")
    master_root.mkdir()  # an empty mount point
    result = alpha.cli("sync", "files", check=False)
    assert result.returncode == 1
    assert "deletion guard" in (result.stdout + result.stderr)
    assert sorted(p.name for p in replica_root.iterdir()) == before

    master_root.rmdir()  # now not even the mount point
    result = alpha.cli("sync", "files", check=False)
    assert result.returncode == 1
    assert sorted(p.name for p in replica_root.iterdir()) == before
    codes = [e["code"] for e in alpha.events("files")]
    assert codes.count("SB2104") == 2
    status = json.loads(alpha.cli("status", "files", "--json").stdout)
    assert status[0]["consistent"] is False


def test_filters_keep_excluded_entries_out(engines: tuple[EngineProcess, EngineProcess],
                                           tmp_path: Path) -> None:
    """Excluded entries are neither copied nor deleted on the replica."""
    alpha, _ = engines
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    (master_root / "cache").mkdir(parents=True)
    (master_root / "cache" / "big.tmp").write_text("skip me\n")
    (master_root / "keep.txt").write_text("keep\n")
    (master_root / "scratch.tmp").write_text("skip me too\n")
    replica_root.mkdir()
    (replica_root / "local-notes.tmp").write_text("replica-only, excluded: must survive\n")
    path = write_scenario(tmp_path / "s.toml", "files", "alpha", "beta",
                          [(master_root, replica_root)],
                          extra="")
    text = path.read_text().replace(f'replica = "{replica_root}"',
                                    f'replica = "{replica_root}"\nexclude = ["*.tmp", "cache/"]')
    path.write_text(text)
    alpha.cli("scenario", "add", str(path))
    alpha.cli("scenario", "start", "files")
    assert sorted(p.name for p in replica_root.iterdir()) == ["keep.txt", "local-notes.tmp"]


def test_leftover_staging_files_are_removed(engines: tuple[EngineProcess, EngineProcess],
                                            tmp_path: Path) -> None:
    """Temporary files left by an interrupted synchronization (an engine killed mid-file) are
    removed by the next one, and never listed or replicated."""
    alpha, _ = engines
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    (master_root / "dir").mkdir(parents=True)
    (master_root / "dir" / "a.txt").write_text("a\n")
    (replica_root / "dir").mkdir(parents=True)
    (replica_root / "dir" / ".standby-tmp-0123456789abcdef").write_bytes(b"half written")
    (replica_root / ".standby-tmp-fedcba9876543210").write_bytes(b"half written")
    alpha.cli("scenario", "add", str(scenario_file(tmp_path, master_root, replica_root)))
    alpha.cli("scenario", "start", "files")
    assert sorted(p.name for p in replica_root.rglob("*")) == ["a.txt", "dir"]
    assert_trees_equal(master_root, replica_root)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a replica disk that fills up."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_replica_disk_fails_cleanly(engines: tuple[EngineProcess, EngineProcess],
                                         tmp_path: Path, small_disk: Path) -> None:
    """A replica disk that fills up fails the file with the reason, leaves no temporary
    files, keeps the other files, and the replica stays marked inconsistent."""
    alpha, _ = engines
    master_root, replica_root = tmp_path / "master", small_disk / "replica"
    master_root.mkdir()
    (master_root / "fits.txt").write_text("small\n")
    (master_root / "too-big.bin").write_bytes(random.Random(3).randbytes(4 << 20))
    alpha.cli("scenario", "add", str(scenario_file(tmp_path, master_root, replica_root)))
    result = alpha.cli("scenario", "start", "files", check=False)
    assert result.returncode == 1
    report = json.loads(alpha.cli("report", "files", "--json").stdout)
    assert report["ok"] is False
    assert "No space left on device" in " ".join(report["errors"])
    assert sorted(p.name for p in replica_root.iterdir()) == ["fits.txt"]
    assert "SB2107" in [e["code"] for e in alpha.events("files")]
    status = json.loads(alpha.cli("status", "files", "--json").stdout)
    assert status[0]["consistent"] is False
